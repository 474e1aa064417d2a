"""The language-model commands end to end on tiny data: train-lm writes a Hugging Face directory,
train joins it frozen to images, caption and evaluate load the run from its base model, a changed
base model is refused, and bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke

SMALL = ["--epochs", "1", "--batch-size", "16", "--feature-dim", "16"]


@pytest.mark.slow
def test_train_lm_then_a_frozen_language_model_captions_and_a_changed_base_is_refused(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train-lm", "--data", "tiny", "--width", "32", "--epochs", "1", "--architecture", "qwen2")
    assert res.exit_code == 0, res.stderr
    lm = workspace / "language-models" / "tiny-qwen2"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in lm.iterdir()}
    res = invoke("train", "--data", "tiny", "--run", "v", "--decoder", f"hf:{lm}", "--fusion", "resampler",
                 "--image-tokens", "4", "--prompt", "a picture of", *SMALL)
    assert res.exit_code == 0, res.stderr
    run = workspace / "runs" / "v"
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["decoder_revision"] == "local" and len(config["decoder_config_sha256"]) == 64
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), "pt") as weights:
        assert not any(k.startswith("lm.") for k in weights.keys())  # the frozen model is not copied
    images = sorted((workspace / "datasets" / "tiny" / "images" / "test").iterdir())[:2]
    res = invoke("caption", *map(str, images), "--run", "v", "--beam-size", "3")
    assert res.exit_code == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 2
    assert invoke("evaluate", "--run", "v", "--no-meteor").exit_code == 0
    config_file = lm / "config.json"
    config_file.write_text(config_file.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    res = invoke("caption", str(images[0]), "--run", "v")
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "was trained on" in res.stderr and "config sha256" in res.stderr


@pytest.mark.parametrize("args,message", [
    (["--decoder", "hf:nobody/no-such-model", "--fusion", "mlp"], "not in the local Hugging Face cache"),
    (["--decoder", "hf:/no/such/dir", "--fusion", "mlp"], "does not exist"),
    (["--lora", "8"], "--lora applies to a pretrained language model"),
    (["--fusion", "xattn"], "needs --decoder hf:"),
    (["--decoder", "hf:nobody/x", "--fusion", "gated"], "reads the image as tokens"),
])
def test_bad_language_model_options_are_one_line(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 args: list[str], message: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "x", *SMALL, *args)
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert not (workspace / "runs" / "x").exists()


def test_out_of_memory_names_the_options_that_lower_memory(workspace: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from mmfuse.train import loop
    from tests.lm_models import save_tiny_lm

    def exhausted(self, on_epoch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop._Loop, "run", exhausted)
    lm = save_tiny_lm(tmp_path / "lm")
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "m", *SMALL, "--decoder", f"hf:{lm}", "--fusion", "mlp")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1, res.stderr
    for option in ("--batch-size", "--precision bf16", "--gradient-checkpointing", "--frozen-dtype bf16", "--image-tokens"):
        assert option in res.stderr
    assert not (workspace / "runs" / "m").exists()


@pytest.mark.slow
def test_compare_ranks_connectors_on_a_language_model_with_the_image_ablated(workspace: Path, tmp_path: Path) -> None:
    from tests.lm_models import save_tiny_lm

    lm = save_tiny_lm(tmp_path / "lm", "gpt2")
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("compare", "--data", "tiny", "--fusion", "pixel-shuffle,xattn", "--decoder", f"hf:{lm}",
                 "--ablate", "image", "--no-meteor", "--image-tokens", "4", "--lora", "2", "--json", *SMALL)
    assert res.exit_code == 0, res.stderr
    rows = {r["fusion"]: r for r in json.loads(res.stdout)["rows"]}
    assert set(rows) == {"pixel-shuffle", "xattn"}
    for row in rows.values():
        assert row["sequence_model"] == f"hf:{lm}" and "cider_d_without_image" in row
