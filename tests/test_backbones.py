"""torchvision image encoders: every one gives a grid and a pooled vector; --pretrained never
downloads and fails fast without the cached file; --weights loads a local state dict, frozen by
default; --fine-tune trains it; a weights file that would run code is refused."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
import torch
import torchvision

from mmfuse.models.backbones import SPECS
from mmfuse.models.checkpoint import load_run
from mmfuse.models.encoders import IMAGE_ENCODERS
from tests.conftest import TINY, invoke

SMALL = ["--epochs", "1", "--batch-size", "8", "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_backbone_gives_grid_and_pooled_and_trains(name: str) -> None:
    size = 224 if name == "vit_b_16" else 64
    torch.manual_seed(0)
    encoder = IMAGE_ENCODERS.create(name, feature_dim=12, image_size=size)
    features = encoder(torch.randn(2, 3, size, size))
    cells = 196 if name == "vit_b_16" else 4  # 64 / 32 = 2 x 2 cells for the CNNs
    assert features.grid.shape == (2, cells, 12) and features.pooled.shape == (2, 12)
    (features.grid.sum() + features.pooled.sum()).backward()
    trainable = [p for p in encoder.backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_weight_file_table_matches_torchvision(name: str) -> None:
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    assert url == f"https://download.pytorch.org/models/{SPECS[name].weights_file}"


def _resnet18_file(tmp_path: Path) -> tuple[Path, dict]:
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def tiny_data(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0


@pytest.mark.slow
def test_weights_load_frozen_by_default_and_fine_tune_trains(tmp_path: Path, workspace: Path, tiny_data) -> None:
    path, state = _resnet18_file(tmp_path)
    for run, extra in (("frozen", []), ("tuned", ["--fine-tune"])):
        res = invoke("train", "--data", "tiny", "--run", run, "--encoder", "resnet18", "--weights", str(path), *SMALL, *extra)
        assert res.exit_code == 0, res.stderr
    frozen = load_run(workspace / "runs" / "frozen").model.encoder.backbone
    tuned = load_run(workspace / "runs" / "tuned").model.encoder.backbone
    conv = "0.weight"  # resnet18's first convolution inside the cut backbone
    assert torch.equal(frozen.state_dict()[conv], state["conv1.weight"])
    assert torch.equal(frozen.state_dict()["1.running_mean"], state["bn1.running_mean"])  # BatchNorm stats kept
    assert not torch.equal(tuned.state_dict()[conv], state["conv1.weight"])


def test_fine_tune_from_trains_only_the_top(tmp_path: Path) -> None:
    path, _ = _resnet18_file(tmp_path)
    encoder = IMAGE_ENCODERS.create("resnet18", feature_dim=8, image_size=64, weights=str(path), freeze=False,
                                    fine_tune_from="7")  # layer4 is the 8th child of the cut resnet
    trains = {n.split(".")[0] for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trains == {"7"}
    with pytest.raises(Exception, match="is not a top-level module of resnet18; choose one of: 0, 1, 2"):
        IMAGE_ENCODERS.create("resnet18", feature_dim=8, image_size=64, freeze=False, fine_tune_from="layer9")


def test_pretrained_without_the_cached_file_fails_fast(tmp_path: Path, monkeypatch, tiny_data) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    start = time.perf_counter()
    res = invoke("train", "--data", "tiny", "--run", "p", "--encoder", "resnet50", "--pretrained", *SMALL)
    took = time.perf_counter() - start
    assert res.exit_code == 1 and took < 5.0
    expected_dir = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert res.stderr.strip() == (
        f"mmfuse: error: --pretrained: the ImageNet weights of resnet50 are not in the torch hub cache: put "
        f"resnet50-11ad3fa6.pth (from https://download.pytorch.org/models/resnet50-11ad3fa6.pth) into {expected_dir}, "
        f"or pass --weights PATH")
    assert not (tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").exists()


def test_pretrained_reads_the_cached_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    path, state = _resnet18_file(tmp_path)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    path.rename(cache / Path(url).name)
    encoder = IMAGE_ENCODERS.create("resnet18", feature_dim=8, image_size=64, pretrained=True)
    assert torch.equal(encoder.backbone.state_dict()["0.weight"], state["conv1.weight"])
    assert not any(p.requires_grad for p in encoder.backbone.parameters())


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_weights_that_would_run_code_are_refused(tmp_path: Path, workspace: Path, tiny_data) -> None:
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as handle:
        pickle.dump({"conv1.weight": _RunsCode()}, handle)
    res = invoke("train", "--data", "tiny", "--run", "e", "--encoder", "resnet18", "--weights", str(evil), *SMALL)
    assert res.exit_code == 1 and "this ran while loading" not in res.output
    assert res.stderr.startswith(f"mmfuse: error: cannot read weights from {evil}: ")


@pytest.mark.parametrize("args,message", [
    (["--encoder", "small_cnn", "--pretrained"], "the small CNN trains from scratch"),
    (["--encoder", "resnet18", "--weights", "nope.pth"], "--weights: no such file: nope.pth"),
    (["--encoder", "vit_b_16"], "vit_b_16 reads 224x224 images, not 64x64"),
])
def test_encoder_option_errors(args: list[str], message: str, tiny_data) -> None:
    res = invoke("train", "--data", "tiny", "--run", "x", *args, *SMALL)
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
