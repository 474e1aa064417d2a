"""Pretrained vision towers as image encoders (``--encoder hf:`` and ``timm:``): tiny random CLIP and
SigLIP towers written with ``save_pretrained``, a timm model with weights from a local file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmfuse.config import ModelConfig
from mmfuse.data.images import MEAN, STD
from mmfuse.errors import MmfuseError
from mmfuse.models.captioner import build_captioner
from mmfuse.models.encoders import build_image_encoder
from mmfuse.models.vision_towers import Renormalize
from tests.lm_models import save_tiny_vision_tower


def test_renormalize_maps_imagenet_pixels_to_the_towers_statistics_exactly() -> None:
    pixels = torch.rand(2, 3, 4, 4)  # in [0, 1]
    imagenet = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    expected = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(Renormalize(mean, std)(imagenet), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_an_hf_tower_gives_its_patch_grid_of_the_chosen_layer_and_a_checkpoint_leaves_it_out(tmp_path: Path,
                                                                                            kind: str) -> None:
    folder = save_tiny_vision_tower(tmp_path / kind, kind)
    cfg = ModelConfig(encoder=f"hf:{folder}", feature_dim=8, image_size=32, fusion="mlp", decoder="transformer",
                      embed_dim=8, hidden_dim=8)
    encoder = build_image_encoder(cfg)
    images = torch.randn(2, 3, 32, 32)
    features = encoder(images)
    assert features.grid.shape == (2, 16, 8) and features.pooled.shape == (2, 8)  # (32 / 8)^2 patches
    hidden = encoder.tower(pixel_values=encoder.renormalize(images), output_hidden_states=True).hidden_states
    assert torch.allclose(features.grid, encoder.proj(hidden[-2][:, -16:]))  # the penultimate layer, as LLaVA
    assert not any(p.requires_grad for p in encoder.tower.parameters())
    model = build_captioner(cfg, 11)
    saved = model.saved_state()
    assert not any(k.startswith("encoder.tower.") for k in saved) and "encoder.proj.weight" in saved
    with pytest.raises(MmfuseError, match="reads 32x32 images, not 64"):
        build_image_encoder(ModelConfig(encoder=f"hf:{folder}", image_size=64))


def test_a_timm_model_loads_weights_from_a_local_file_and_is_then_frozen(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    encoder = build_image_encoder(ModelConfig(encoder="timm:resnet10t", weights=str(tmp_path / "w.safetensors"),
                                              feature_dim=8, image_size=64))
    assert torch.equal(encoder.tower.conv1[0].weight, source.conv1[0].weight)
    assert not any(p.requires_grad for p in encoder.tower.parameters())
    features = encoder(torch.randn(2, 3, 64, 64))
    assert features.grid.shape == (2, 4, 8) and features.pooled.shape == (2, 8)  # 64 px / 32 = 2 x 2 grid
    with pytest.raises(MmfuseError, match="timm has no model"):
        build_image_encoder(ModelConfig(encoder="timm:no_such_net"))


@pytest.mark.slow
def test_cache_features_stores_an_hf_towers_outputs_and_training_reads_them(workspace: Path, tmp_path: Path) -> None:
    from tests.conftest import TINY, invoke

    tower = save_tiny_vision_tower(tmp_path / "clip")
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("cache-features", "--data", "tiny", "--encoder", f"hf:{tower}")
    assert res.exit_code == 0, res.stderr
    caches = list((workspace / "datasets" / "tiny" / "features").iterdir())
    assert len(caches) == 1 and caches[0].name.startswith("hf-") and caches[0].name.endswith("-layer-2-32")
    res = invoke("train", "--data", "tiny", "--run", "t", "--encoder", f"hf:{tower}", "--fusion", "mlp",
                 "--decoder", "transformer", "--epochs", "1", "--batch-size", "16", "--feature-dim", "16",
                 "--embed-dim", "8", "--hidden-dim", "16")
    assert res.exit_code == 0, res.stderr
    assert "reads image features from the cache" in res.stderr
