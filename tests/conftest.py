"""Shared fixtures: every test gets its own workspace; a tiny data set and trained run are built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmfuse.cli import app

TINY = ["--train-images", "48", "--val-images", "8", "--test-images", "8", "--seed", "3"]


@pytest.fixture(autouse=True)
def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MMFUSE_WORKSPACE at a fresh directory for each test."""
    ws = tmp_path / "workspace"
    monkeypatch.setenv("MMFUSE_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def workspace(_workspace: Path) -> Path:
    return _workspace


def invoke(*args: str, input: str | None = None):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding data set 'tiny' and a 2-epoch run 'r' (shared, treat as read-only)."""
    ws = tmp_path_factory.mktemp("trained") / "ws"
    old = os.environ.get("MMFUSE_WORKSPACE")
    os.environ["MMFUSE_WORKSPACE"] = str(ws)
    try:
        res = invoke("prepare-data", "shapes", "--name", "tiny", *TINY)
        assert res.exit_code == 0, res.stderr
        res = invoke("train", "--data", "tiny", "--run", "r", "--epochs", "2", "--batch-size", "16",
                     "--feature-dim", "32", "--embed-dim", "16", "--hidden-dim", "32")
        assert res.exit_code == 0, res.stderr
    finally:
        if old is None:
            os.environ.pop("MMFUSE_WORKSPACE", None)
        else:
            os.environ["MMFUSE_WORKSPACE"] = old
    return ws


def tiny_run(tmp_path_factory: pytest.TempPathFactory, source: str, data: str, run: str, *train_args: str) -> Path:
    """A fresh workspace holding data set ``data`` (``source``, tiny sizes) and run ``run``, trained
    with small widths and ``train_args``."""
    ws = tmp_path_factory.mktemp(run) / "ws"
    res = invoke("prepare-data", source, "--name", data, *TINY, "-w", str(ws))
    assert res.exit_code == 0, res.stderr
    res = invoke("train", "--data", data, "--run", run, "--batch-size", "16", "--feature-dim", "32",
                 "--embed-dim", "16", "--hidden-dim", "32", *train_args, "-w", str(ws))
    assert res.exit_code == 0, res.stderr
    return ws


@pytest.fixture(scope="session")
def trained_qa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding data set 'qa' (shapes-qa) and a 1-epoch classifier run 'q' (read-only)."""
    return tiny_run(tmp_path_factory, "shapes-qa", "qa", "q", "--task", "classify", "--fusion", "gated", "--epochs", "1")
