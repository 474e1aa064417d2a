"""Runs written by older mmfuse (real ones, in tests/fixtures/older_runs; its README says how they
were made): they load and caption exactly as the version that wrote them did; a run from before
resumable checkpoints cannot be continued with --resume, and the refusal says what to do instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import invoke

OLDER = Path(__file__).parent / "fixtures" / "older_runs"
EXPECTED = json.loads((OLDER / "expected.json").read_text(encoding="utf-8"))


def _install(workspace: Path, name: str) -> Path:
    """Copy the older run ``name`` into the test's workspace as run ``name``."""
    run_dir = workspace / "runs" / name
    shutil.copytree(OLDER / name, run_dir)
    return run_dir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", ["skeleton", "pre-engine"])
def test_an_older_run_captions_as_the_version_that_wrote_it(workspace: Path, name: str) -> None:
    run_dir = _install(workspace, name)
    before = _snapshot(run_dir)
    images = sorted(str(p) for p in (OLDER / "images").glob("*.png"))
    res = invoke("caption", *images, "--run", name, "--format", "jsonl")
    assert res.exit_code == 0, res.stderr
    got = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert sorted(got) == sorted(EXPECTED[name])
    for image, then in EXPECTED[name].items():
        assert got[image]["caption"] == then["caption"], image
        if "score" in then:
            assert got[image]["score"] == pytest.approx(then["score"], abs=1e-4), image
    assert _snapshot(run_dir) == before  # loading migrates in memory; the run's files stay as they were


@pytest.mark.parametrize("name", ["skeleton", "pre-engine"])
def test_an_older_run_cannot_be_resumed_and_says_what_to_do(workspace: Path, name: str) -> None:
    run_dir = _install(workspace, name)
    before = _snapshot(run_dir)
    res = invoke("train", "--resume", "--run", name)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "no resumable checkpoint" in lines[0] and "older mmfuse" in lines[0]
    assert f"mmfuse train --run {name} --overwrite" in lines[0]
    assert _snapshot(run_dir) == before


def test_older_tensor_names_are_renamed_only_where_todays_model_expects_them() -> None:
    import torch

    from mmfuse.models.checkpoint import migrate_names

    t = torch.zeros(1)
    expected = {"decoder.rnn.weight_ih_l0": t, "encoder.lstm.weight": t}
    state = {"decoder.lstm.weight_ih_l0": t, "encoder.lstm.weight": t, "decoder.gru.unknown": t}
    assert set(migrate_names(state, expected)) == {"decoder.rnn.weight_ih_l0", "encoder.lstm.weight",
                                                   "decoder.gru.unknown"}
