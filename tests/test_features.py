"""The feature cache: the frozen backbone's outputs for every image, equal (to fp16) to running the
backbone; an interrupted build resumes to the same bytes; training with the same frozen encoder
reads it, and says so; what cannot be cached is refused. And the in-memory cache of decoded pixels
that the training data sets share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from mmfuse.config import ModelConfig
from mmfuse.data.features import build_cache, open_cache
from mmfuse.data.images import image_transform, load_rgb
from mmfuse.errors import Interrupted
from mmfuse.models.encoders import build_image_encoder
from tests.conftest import TINY, invoke

SMALL = ["--epochs", "1", "--batch-size", "8", "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16"]


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture
def tiny(workspace: Path) -> Path:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    return workspace / "datasets" / "tiny"


def test_cache_holds_the_backbone_outputs_of_every_image(tiny: Path, weights: Path) -> None:
    res = invoke("cache-features", "--data", "tiny", "--encoder", "resnet18", "--weights", str(weights), "--workers", "0")
    assert res.exit_code == 0, res.stderr
    assert "features of 64 images in " in res.stderr and "64 encoded now (0 were already there)" in res.stderr
    cfg = ModelConfig(encoder="resnet18", weights=str(weights), image_size=64)
    cache = open_cache(tiny, cfg)
    assert cache is not None and cache.grid.shape == (64, 4, 512) and cache.pooled.shape == (64, 512)
    encoder = build_image_encoder(cfg).eval()
    image = sorted(cache.rows)[10]
    with torch.inference_mode():
        tokens, pooled = encoder.backbone_features(image_transform(64)(load_rgb(image)).unsqueeze(0))
    cached_tokens, cached_pooled = cache.features(Path(image))
    assert torch.allclose(cached_tokens.float(), tokens[0], rtol=2e-3, atol=2e-3)
    assert torch.allclose(cached_pooled.float(), pooled[0], rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_an_interrupted_build_resumes_to_the_same_bytes(tiny: Path, weights: Path, tmp_path: Path) -> None:
    cfg = ModelConfig(encoder="resnet18", weights=str(weights), image_size=64)

    def stop_after_two_batches(done: int, total: int) -> None:
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="the cache keeps the 16 of 64 images encoded so far; run the same command "
                                          "again to continue"):
        build_cache(tiny, cfg, batch_size=8, on_progress=stop_after_two_batches)
    assert open_cache(tiny, cfg) is None  # unfinished caches are not used
    root, meta, new = build_cache(tiny, cfg, batch_size=8)
    assert meta["done"] == 64 and new == 48
    resumed = [(root / f).read_bytes() for f in ("grid.f16", "pooled.f16")]
    for f in ("grid.f16", "pooled.f16", "meta.json", "images.json"):
        (root / f).unlink()
    build_cache(tiny, cfg, batch_size=8)
    assert [(root / f).read_bytes() for f in ("grid.f16", "pooled.f16")] == resumed


@pytest.mark.slow
def test_training_with_the_frozen_encoder_reads_the_cache(tiny: Path, weights: Path, workspace: Path) -> None:
    assert invoke("cache-features", "--data", "tiny", "--encoder", "resnet18", "--weights", str(weights)).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "cached", "--encoder", "resnet18", "--weights", str(weights), *SMALL)
    assert res.exit_code == 0, res.stderr
    assert "training reads image features from the cache" in res.stderr
    res = invoke("train", "--data", "tiny", "--run", "tuned", "--encoder", "resnet18", "--weights", str(weights),
                 "--fine-tune", *SMALL)
    assert res.exit_code == 0 and "from the cache" not in res.stderr
    res = invoke("evaluate", "--run", "cached", "--no-meteor")  # evaluation reads pixels through the same backbone
    assert res.exit_code == 0, res.stderr


@pytest.mark.slow
def test_cached_and_pixel_training_agree(tiny: Path, weights: Path, workspace: Path) -> None:
    """One epoch from the cache and one from pixels reach (nearly) the same loss: fp16 features only."""
    res = invoke("train", "--data", "tiny", "--run", "pixels", "--encoder", "resnet18", "--weights", str(weights), *SMALL)
    assert res.exit_code == 0
    assert invoke("cache-features", "--data", "tiny", "--encoder", "resnet18", "--weights", str(weights)).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "cached", "--encoder", "resnet18", "--weights", str(weights), *SMALL)
    assert res.exit_code == 0
    import json

    losses = [json.loads((workspace / "runs" / r / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
              for r in ("pixels", "cached")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


@pytest.mark.parametrize("args,message", [
    (["--encoder", "small_cnn"], "only a frozen pretrained encoder can be cached"),
    (["--encoder", "resnet18"], "only a frozen pretrained encoder can be cached"),
    (["--encoder", "resnet18", "--weights", "nope.pth"], "--weights: no such file: nope.pth"),
])
def test_what_cannot_be_cached_is_refused(args: list[str], message: str, tiny: Path) -> None:
    res = invoke("cache-features", "--data", "tiny", *args)
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tiny / "features").exists() or not any((tiny / "features").iterdir())


def test_decoded_pixels_are_kept_once_per_image_while_the_split_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from mmfuse.data import dataset

    paths = []
    for i, colour in enumerate(["red", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 12), colour).save(paths[-1])
    reads: list[Path] = []
    monkeypatch.setattr(dataset, "load_rgb", lambda p: reads.append(p) or load_rgb(p))
    samples = [paths[0], paths[1], paths[0], paths[0]]  # three questions about one image, one about another
    answers = dataset.AnswerDataset(samples, [[1]] * 4, [[[1, 2]]] * 4, 8)
    first = [answers[i][0] for i in range(4)] + [answers[i][0] for i in range(4)]  # two epochs
    assert reads == paths and torch.equal(first[0], first[2]) and not torch.equal(first[0], first[1])
    assert torch.equal(first[0], image_transform(8)(load_rgb(paths[0])))  # as inference transforms it
    monkeypatch.setattr(dataset, "CACHE_LIMIT_BYTES", 3 * 8 * 8)  # room for one image: the split does not fit
    reads.clear()
    labelled = dataset.LabelledDataset(samples, [[1]] * 4, [0] * 4, 8)
    for i in range(4):
        labelled[i]
    assert reads == samples  # nothing kept: decoded at every use
