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


def _is_subsequence(short: list[int], long: list[int]) -> bool:
    rest = iter(long)
    return all(word in rest for word in short)


def test_train_lm_documents_put_a_noisy_paraphrase_before_a_share_of_captions_and_never_train_on_it() -> None:
    import random

    from mmfuse.train.language_model import Specials, documents, pack

    special = Specials(bos=1, eos=2, unk=3)
    images = [[[10 * i + 4, 10 * i + 5, 10 * i + 6], [10 * i + 7, 10 * i + 5, 10 * i + 6, 10 * i + 8]] for i in range(300)]
    sequences = documents(images, 0.8, random.Random(0), special)
    targets = [labels[labels.index(1):] for _, labels in sequences]  # the part trained on: <s> caption </s>
    assert sorted(targets) == sorted([1, *c, 2] for caps in images for c in caps)  # each caption once, whole
    read = [(ids[: len(ids) - len(t)], t) for (ids, _), t in zip(sequences, targets)]
    with_context = [(r, t) for r, t in read if r]
    assert 0.75 < len(with_context) / len(read) < 0.85
    for context, target in with_context:
        assert context[0] == 1 and context[-1] == 2
        words = [w for w in context[1:-1] if w != special.unk]
        image = images[(target[1] - 4) // 10]
        other = next(c for c in image if c != target[1:-1])
        assert _is_subsequence(words, other)  # another caption of the same image, words dropped, in order
    dropped = sum(len([w for w in r[1:-1] if w != 3]) for r, _ in with_context) / sum(len(t) - 2 for _, t in with_context)
    assert 0.6 < dropped < 0.9  # about three words in four survive
    assert any(3 in r for r, _ in with_context)
    assert all(labels == ids for ids, labels in documents(images, 0.0, random.Random(0), special))
    blocks = pack(sequences, 64)
    assert all(len(ids) == len(labels) <= 64 for ids, labels in blocks)
    assert [t for ids, _ in blocks for t in ids] == [t for ids, _ in sequences for t in ids]
