"""Checkpoints are safetensors + JSON: round-trip exactly, load on CPU, refuse mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from mmfuse.config import ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from mmfuse.errors import MmfuseError
from mmfuse.models.captioner import build_captioner
from mmfuse.models.checkpoint import load_run, read_metadata, save_weights
from mmfuse.workspace import atomic_write_bytes


def _run_dir(tmp_path: Path, cfg: RunConfig, vocab_tokens: list[str]) -> Path:
    run = tmp_path / "runs" / "x"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    (run / "vocab.json").write_text(json.dumps({"min_count": 1, "tokens": vocab_tokens}))
    return run


def test_round_trip_gives_identical_weights_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16))
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    model = build_captioner(cfg.model, len(tokens)).eval()
    run = _run_dir(tmp_path, cfg, tokens)
    save_weights(run / "best.safetensors", model, {"epoch": "3"})
    loaded = load_run(run, "best", "cpu")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    images, toks = torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(images, toks, torch.arange(2)), loaded.model(images, toks, torch.arange(2)))
    assert read_metadata(run / "best.safetensors")["epoch"] == "3"
    assert set(load_file(run / "best.safetensors")) == set(model.state_dict())  # plain tensors, no pickle


def test_mismatched_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = RunConfig(model=ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16))
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>"]
    run = _run_dir(tmp_path, RunConfig(model=ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=20)), tokens)
    save_weights(run / "best.safetensors", build_captioner(cfg.model, 4), {})
    with pytest.raises(MmfuseError, match=r"do not match the run's config \(other shape: decoder\."):
        load_run(run)


def test_weights_of_another_fusion_design_name_the_tensors_that_differ(tmp_path: Path) -> None:
    tokens = ["<pad>", "<bos>", "<eos>", "<unk>"]
    cfg = RunConfig(model=ModelConfig(image_size=32, feature_dim=16, embed_dim=8, hidden_dim=16, fusion="prefix"))
    run = _run_dir(tmp_path, cfg, tokens)
    state = build_captioner(cfg.model, 4).state_dict()
    state["fusion.mapper.0.weight"] = state.pop("fusion.queries")  # as an older prefix fusion would have it
    atomic_write_bytes(run / "best.safetensors", st_save({k: v.contiguous() for k, v in state.items()}))
    with pytest.raises(MmfuseError, match=r"missing: fusion\.queries; unexpected: fusion\.mapper\.0\.weight\).*Retrain"):
        load_run(run)


def test_missing_and_damaged_weights(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, RunConfig(), ["<pad>", "<bos>", "<eos>", "<unk>"])
    with pytest.raises(MmfuseError, match="no best weights"):
        load_run(run)
    (run / "best.safetensors").write_bytes(b"\\x80\\x04not a safetensors file")
    with pytest.raises(MmfuseError, match="damaged"):
        load_run(run)


def test_config_json_round_trip_and_validation() -> None:
    cfg = RunConfig(model=ModelConfig(fusion="concat", hidden_dim=64), train=TrainConfig(epochs=3, lr=0.01))
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(MmfuseError, match="unknown key"):
        from_dict(RunConfig, {"model": {"hidden": 3}})
    with pytest.raises(MmfuseError, match="expected int"):
        from_dict(RunConfig, {"train": {"epochs": "3"}})
    with pytest.raises(MmfuseError, match="newer"):
        from_dict(RunConfig, {"format_version": 99}).validate()
