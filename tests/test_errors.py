"""Every expected failure: one clear stderr line, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke


def _fails(res, *needles: str) -> str:
    assert res.exit_code != 0
    err = res.stderr.rstrip()  # a leading blank line (e.g. an empty progress bar) counts as noise
    assert "Traceback" not in res.output and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mmfuse: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_image(trained: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    res = invoke("caption", str(missing), "--run", "r", "-w", str(trained))
    _fails(res, "image not found", str(missing))
    assert res.stdout == ""


def test_unreadable_image_is_skipped_and_named(trained: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a png")
    good = next((trained / "datasets/tiny/images/test").glob("*.png"))
    res = invoke("caption", str(fake), str(good), "--run", "r", "-w", str(trained))
    assert res.exit_code == 1 and "Traceback" not in res.output
    warning, summary, error = res.stderr.splitlines()
    assert summary.startswith("captioned 1 of 2 images in ")
    assert warning.startswith("mmfuse: warning: not a readable image file: ") and str(fake) in warning
    assert error == f"mmfuse: error: 1 of 2 inputs could not be captioned: {fake}"
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == [str(good)]  # the good one is captioned


def test_truncated_image(trained: Path, tmp_path: Path) -> None:
    good = next((trained / "datasets/tiny/images/test").glob("*.png"))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    _fails(invoke("caption", str(cut), "--run", "r", "-w", str(trained)), str(cut))


def test_unknown_run(trained: Path) -> None:
    _fails(invoke("evaluate", "--run", "ghost", "-w", str(trained)), "no run 'ghost'", "runs: r")
    _fails(invoke("caption", "x.png", "--run", "ghost", "-w", str(trained)), "no run 'ghost'")


def test_unknown_data_set(workspace: Path) -> None:
    _fails(invoke("train", "--data", "ghost"), "no data set 'ghost'", "prepare-data")
    assert not (workspace / "runs").exists()


def test_unknown_fusion(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    _fails(invoke("train", "--fusion", "magic"), "unknown fusion 'magic'", "concat")
    assert not (workspace / "runs").exists()


def test_unknown_source() -> None:
    _fails(invoke("prepare-data", "imagenet"), "unknown data source 'imagenet'", "shapes")


def test_empty_data_set(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    (workspace / "datasets/shapes/train.jsonl").write_text("")
    _fails(invoke("train"), "split 'train'", "empty")
    assert not (workspace / "runs").exists()


def test_zero_images_requested(workspace: Path) -> None:
    _fails(invoke("prepare-data", "shapes", "--train-images", "0"), "--train-images must be >= 1")
    assert not (workspace / "datasets" / "shapes").exists()
    assert list((workspace / "datasets").glob("*")) == []  # no staging leftovers


@pytest.mark.parametrize("args,needle", [
    (["train", "--epochs", "0"], "epochs (--epochs) must be >= 1"),
    (["train", "--epochs", "many"], "--epochs"),
    (["train", "--warmup-steps", "-1"], "warmup_steps (--warmup-steps) must be >= 0, got -1"),
    (["train", "--device", "tpu"], "--device"),
    (["evaluate"], "--run"),
    (["caption", "--run", "r"], "IMAGE"),
])
def test_bad_options(args: list[str], needle: str, workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", *TINY).exit_code == 0
    _fails(invoke(*args), needle)


def test_run_without_weights(trained: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    (ws / "runs/r/best.safetensors").unlink()
    _fails(invoke("evaluate", "--run", "r", "-w", str(ws)), "no best weights")


def test_existing_run_is_not_overwritten(trained: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    before = (ws / "runs/r/best.safetensors").read_bytes()
    _fails(invoke("train", "--data", "tiny", "--run", "r", "-w", str(ws)), "already exists", "--overwrite")
    assert (ws / "runs/r/best.safetensors").read_bytes() == before


def test_malformed_config_file(workspace: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    _fails(invoke("train", "--config", str(path)), "not valid JSON", str(path))
    path.write_text(json.dumps({"train": {"epoch": 3}}))
    _fails(invoke("train", "--config", str(path)), "unknown key", "epoch")


def test_debug_shows_the_traceback(workspace: Path) -> None:
    res = invoke("--debug", "train", "--data", "ghost")
    assert res.exit_code != 0
    assert res.exception is not None and "no data set" in str(res.exception)
