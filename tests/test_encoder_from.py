"""--encoder-from: a model's image encoder starts from another run's, and a bad source is refused
before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mmfuse.config import ModelConfig
from mmfuse.models.checkpoint import load_encoder_from_run, read_weights
from mmfuse.models.classifier import build_classifier
from tests.conftest import TINY, invoke

SMALL = ["--feature-dim", "32", "--embed-dim", "16", "--hidden-dim", "32"]  # the `trained` captioner's widths


def _with_captioner(trained: Path, workspace: Path) -> Path:
    """The shared captioner run 'r' copied into this test's workspace; returns its directory."""
    run = workspace / "runs" / "r"
    shutil.copytree(trained / "runs" / "r", run)
    return run


def _encoder_tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in read_weights(path).items() if k.startswith("encoder.")}


def test_loading_copies_the_encoder_and_nothing_else(trained: Path, workspace: Path) -> None:
    run = _with_captioner(trained, workspace)
    cfg = ModelConfig(task="classify", fusion="transformer", feature_dim=32, embed_dim=16, hidden_dim=32, image_size=32)
    torch.manual_seed(0)
    model = build_classifier(cfg, vocab_size=20, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = load_encoder_from_run(model.encoder, run, cfg)
    source = _encoder_tensors(run / "best.safetensors")
    after = model.state_dict()
    assert copied == len(source) > 0
    assert all(torch.equal(after[k], v) for k, v in source.items())
    assert any(not torch.equal(before[k], v) for k, v in source.items() if v.is_floating_point())
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("encoder."))


def test_training_starts_from_the_runs_encoder_and_records_it(trained: Path, workspace: Path) -> None:
    run = _with_captioner(trained, workspace)
    assert invoke("prepare-data", "shapes-qa", "--name", "qa", *TINY).exit_code == 0
    for name, extra in (("warm", ["--encoder-from", "r"]), ("cold", [])):
        res = invoke("train", "--data", "qa", "--fusion", "concat", "--run", name, "--epochs", "1", "--lr", "1e-9",
                     *SMALL, *extra)
        assert res.exit_code == 0, res.stderr
    source = _encoder_tensors(run / "best.safetensors")
    warm = _encoder_tensors(workspace / "runs" / "warm" / "best.safetensors")
    cold = _encoder_tensors(workspace / "runs" / "cold" / "best.safetensors")
    conv = "encoder.body.0.0.weight"  # BatchNorm statistics move in training; with lr 1e-9 weights do not
    assert torch.allclose(warm[conv], source[conv], atol=1e-6)
    assert not torch.allclose(cold[conv], source[conv], atol=1e-3)
    config = json.loads((workspace / "runs" / "warm" / "config.json").read_text())
    assert config["train"]["encoder_from"] == "r"


def test_a_bad_encoder_source_is_refused_before_anything_is_written(trained: Path, workspace: Path) -> None:
    _with_captioner(trained, workspace)
    assert invoke("prepare-data", "shapes-qa", "--name", "qa", *TINY).exit_code == 0
    res = invoke("train", "--data", "qa", "--run", "x", "--encoder-from", "nope", *SMALL)
    assert res.exit_code == 1 and "no run 'nope'" in res.stderr and "runs: r" in res.stderr
    res = invoke("train", "--data", "qa", "--run", "x", "--encoder-from", "r", "--feature-dim", "64")
    assert res.exit_code == 1 and "feature_dim is 32" in res.stderr and "--feature-dim 32" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = invoke("compare", "--data", "qa", "--fusion", "concat,sum", "--encoder-from", "nope")
    assert res.exit_code == 1 and "no run 'nope'" in res.stderr
    shutil.copytree(workspace / "runs" / "r", workspace / "runs" / "c-concat")
    res = invoke("compare", "--data", "qa", "--name", "c", "--fusion", "concat", "--encoder-from", "c-concat")
    assert res.exit_code == 1 and "is one of the runs this comparison replaces" in res.stderr
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == ["c-concat", "r"]
    assert not (workspace / "compare").exists()
