"""Reliability: a data set or run written by one process at a time (stale locks cleared), the same
seed gives the same run, and files crafted to run code on load are refused without running it."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmfuse.train.state import CHECKPOINT
from tests.conftest import TINY, invoke

SMALL = ["--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16", "--batch-size", "16"]


_HOLD = """
import sys, time
from pathlib import Path
from mmfuse.workspace import exclusive
with exclusive(Path(sys.argv[1]), "it"):
    print("holding", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def lock_holder():
    """Start a live process that holds the write lock of a data set or run directory."""
    procs = []

    def hold(target: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(target)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc.pid

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_prepare_data_is_refused_while_another_process_writes_the_data_set(workspace: Path, lock_holder) -> None:
    pid = lock_holder(workspace / "datasets" / "tiny")
    res = invoke("prepare-data", "shapes", "--name", "tiny", *TINY)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"mmfuse: error: data set 'tiny' is being written by another mmfuse process (pid {pid} on {socket.gethostname()}, since ")
    assert lines[0].endswith("); wait for it to finish")
    assert not (workspace / "datasets" / "tiny").exists() and (workspace / "datasets" / ".tiny.lock").exists()


def test_a_lock_file_left_by_a_dead_process_is_free(workspace: Path) -> None:
    for lock in (workspace / "datasets" / ".tiny.lock", workspace / "runs" / ".r.lock"):
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "started": "2026-12-03 10:00:00"}))
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "r", "--epochs", "1", *SMALL)
    assert res.exit_code == 0, res.stderr
    assert not list((workspace / "datasets").glob(".*.lock")) and not list((workspace / "runs").glob(".*.lock"))


def test_train_is_refused_while_another_process_trains_the_same_run(trained: Path, tmp_path: Path, lock_holder) -> None:
    from unittest import mock

    from mmfuse.train.loop import _Loop

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    with mock.patch.object(_Loop, "_stop_requested", return_value=True):  # a resumable run: stopped after epoch 1
        assert invoke("train", "--data", "tiny", "--run", "r", "--overwrite", *SMALL, "-w", str(ws)).exit_code == 130
    pid = lock_holder(ws / "runs" / "r")
    before = {p: p.read_bytes() for p in (ws / "runs" / "r").iterdir()}
    for args in (["--run", "r", "--resume"], ["--data", "tiny", "--run", "r", "--overwrite", *SMALL]):
        res = invoke("train", *args, "-w", str(ws))
        assert res.exit_code == 1
        assert res.stderr.strip().splitlines()[-1].startswith(
            f"mmfuse: error: run 'r' is being written by another mmfuse process (pid {pid}")
    assert {p: p.read_bytes() for p in (ws / "runs" / "r").iterdir()} == before


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    for run in ("a", "b"):
        assert invoke("train", "--data", "tiny", "--run", run, "--epochs", "2", *SMALL).exit_code == 0

    def metrics(run: str) -> list[dict]:
        lines = (workspace / "runs" / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")} for line in lines]

    assert metrics("a") == metrics("b")
    a, b = (load_file(workspace / "runs" / run / "last.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # (the header's key order may vary)
    res = invoke("train", "--data", "tiny", "--run", "c", "--epochs", "2", "--seed", "1", *SMALL)
    assert res.exit_code == 0 and metrics("c") != metrics("a")  # the seed matters


class _RunsCode:
    """Unpickling this creates a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["best.safetensors", CHECKPOINT])
def test_a_checkpoint_crafted_to_run_code_is_refused_and_never_runs(trained: Path, tmp_path: Path, target: str) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    marker = tmp_path / "pwned"
    (ws / "runs" / "r" / target).write_bytes(pickle.dumps(_RunsCode(marker)))
    if target == CHECKPOINT:
        res = invoke("train", "--run", "r", "--resume", "-w", str(ws))
        expected = "resume checkpoint is damaged"
    else:
        image = next((ws / "datasets" / "tiny" / "images" / "test").glob("*.png"))
        res = invoke("caption", str(image), "--run", "r", "-w", str(ws))
        expected = "weights file is damaged or not safetensors"
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert expected in res.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def _killed_when(ready, args: list[str], workspace: Path) -> None:
    """Start ``mmfuse ARGS``, kill -9 it as soon as ``ready()`` holds, and check that the kill is what
    ended it (a command that finished first fails the test instead of passing it)."""
    proc = subprocess.Popen([sys.executable, "-m", "mmfuse", *args], env={**os.environ, "MMFUSE_WORKSPACE": str(workspace)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not ready():
            assert proc.poll() is None, f"mmfuse {args[0]} ended (code {proc.returncode}) before the point to kill it at"
            assert time.monotonic() < deadline, "the point to kill at never came"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _images_written(workspace: Path, count: int):
    return lambda: sum(1 for _ in workspace.glob("datasets/.shapes.staging-*/images/train/*.png")) >= count


@pytest.mark.slow
@pytest.mark.parametrize("images", [150, 800])  # of 1000 training images: early, and late in the writing
def test_prepare_data_killed_at_any_point_leaves_the_old_data_set_or_none_and_runs_again(images: int, workspace: Path) -> None:
    args = ["prepare-data", "shapes", "--train-images", "1000", "--val-images", "20", "--test-images", "20"]
    _killed_when(_images_written(workspace, images), args, workspace)
    datasets = workspace / "datasets"
    assert not (datasets / "shapes").exists()  # killed while staging: no data set, not a half-made one
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in datasets.iterdir()) == ["shapes"]  # no staging leftovers, no lock
    assert json.loads((datasets / "shapes" / "manifest.json").read_text())["splits"]["train"]["images"] == 1000


def _checkpoint_step(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(json.loads(handle.metadata()["mmfuse"])["progress"]["step"])
    except Exception:  # not written yet, or being replaced
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("step", [2, 26])  # of 36 (12 per epoch): early in epoch 1, in epoch 3
def test_train_killed_at_any_point_resumes_to_the_end(step: int, workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    args = ["train", "--data", "tiny", "--run", "k", "--epochs", "3", "--save-every", "1", *SMALL[:-2], "--batch-size", "4"]
    run = workspace / "runs" / "k"
    _killed_when(lambda: _checkpoint_step(run / CHECKPOINT) >= step, args, workspace)
    assert _checkpoint_step(run / CHECKPOINT) >= step
    res = invoke("train", "--run", "k", "--resume")
    assert res.exit_code == 0, res.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert not list((workspace / "runs").glob(".*.lock"))


def test_prepare_data_again_with_the_same_arguments_gives_the_same_data_set(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    first = _snapshot(workspace / "datasets" / "tiny")
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    assert _snapshot(workspace / "datasets" / "tiny") == first
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == ["tiny"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_prepare_data_cannot_replace_the_data_set_a_training_reads(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    args = ["train", "--data", "tiny", "--epochs", "3", *SMALL[:-2], "--batch-size", "4"]
    proc = subprocess.Popen([sys.executable, "-m", "mmfuse", *args, "--run", "busy"],
                            env={**os.environ, "MMFUSE_WORKSPACE": str(workspace)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = workspace / "datasets" / ".tiny.lock"
        for _ in range(600):  # the training holds the data set once it has started
            if lock.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        before = _snapshot(workspace / "datasets" / "tiny")
        res = invoke("prepare-data", "shapes", "--name", "tiny", "--train-images", "48", "--val-images", "8",
                     "--test-images", "8", "--seed", "9")
        assert proc.poll() is None, "the training ended before prepare-data tried: nothing was tested"
        assert res.exit_code == 1
        assert res.stderr.strip().splitlines() == [
            f"mmfuse: error: data set 'tiny' is in use by another mmfuse process (pid {proc.pid}: "
            f"mmfuse {' '.join(args)} --run busy); wait for it to finish"]
        assert _snapshot(workspace / "datasets" / "tiny") == before
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert invoke(*args, "--run", "calm").exit_code == 0  # the same training, undisturbed
    busy, calm = (load_file(workspace / "runs" / run / "last.safetensors") for run in ("busy", "calm"))
    assert busy.keys() == calm.keys() and all(torch.equal(busy[k], calm[k]) for k in busy)
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
                for line in (workspace / "runs" / run / "metrics.jsonl").read_text().splitlines()] for run in ("busy", "calm")]
    assert metrics[0] == metrics[1]


# --- signals: every long command stops with one line, leaves nothing half-written, says how to go on

def _start(args: list[str], workspace: Path, **kwargs) -> subprocess.Popen:
    """``mmfuse ARGS`` in a process that hears Ctrl-C as a terminal's foreground job does (a test
    run started in the background by a shell inherits SIGINT ignored, and so would the command)."""
    return subprocess.Popen([sys.executable, "-m", "mmfuse", *args], env={**os.environ, "MMFUSE_WORKSPACE": str(workspace)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition() or proc.poll() is not None:
            return
        time.sleep(0.02)


def test_prepare_data_stopped_by_sigterm_leaves_nothing_and_says_so(workspace: Path) -> None:
    proc = _start(["prepare-data", "shapes", "--train-images", "3000", "--val-images", "8", "--test-images", "8"],
                  workspace)
    datasets = workspace / "datasets"
    _wait_for(lambda: datasets.is_dir() and any(datasets.glob(".shapes.staging-*/images/train/*.png")), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.decode().strip().splitlines()[-1] == ("mmfuse: error: prepare-data interrupted: data set 'shapes' was "
                                                        "not created (nothing half-written is left); run the same command again")
    assert list(datasets.iterdir()) == []  # no staging directory, no lock


@pytest.mark.slow
def test_caption_stopped_by_ctrl_c_ends_its_json_array_and_says_where(trained: Path, tmp_path: Path) -> None:
    images = sorted((trained / "datasets/tiny/images/test").glob("*.png"))[:3]
    proc = _start(["caption", "-", "--run", "r", "--format", "json", "--batch-size", "1"], trained, stdin=subprocess.PIPE)
    proc.stdin.write("".join(f"{p}\n" for p in images).encode())
    proc.stdin.flush()  # stdin stays open: caption waits for more paths after the first results
    seen = b""
    while seen.count(b'"path"') < 2:
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, proc.stderr.read()
        seen += chunk
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    items = json.loads(seen + stdout)  # a whole JSON array
    assert [i["path"] for i in items] == [str(p) for p in images[:len(items)]] and len(items) >= 2
    assert stderr.decode().strip().splitlines()[-1].startswith(
        f"mmfuse: error: caption interrupted after {len(items)} image(s): the output (a closed JSON array) holds")


def test_evaluate_interrupted_writes_no_report(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmfuse.evaluate.reports

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    before = _snapshot(ws)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mmfuse.evaluate.reports, "_score_split", interrupted)
    res = invoke("evaluate", "--run", "r", "--no-meteor", "-w", str(ws))
    assert res.exit_code == 130
    assert res.stderr.strip().splitlines() == ["mmfuse: error: evaluate interrupted before its report was written "
                                               "(run 'r' is as it was); run the same command again"]
    assert _snapshot(ws) == before  # no report, and the data set's lock is gone


@pytest.mark.slow
def test_compare_interrupted_keeps_the_fusions_it_finished_and_continues(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    args = ["compare", "--data", "tiny", "--fusion", "concat,sum", "--epochs", "4", "--batch-size", "4", "--no-meteor"]
    proc = _start(args, workspace)
    finished = workspace / "compare" / "tiny" / "finished" / "concat.json"
    sum_started = workspace / "runs" / "tiny-sum" / "checkpoint.safetensors"  # sum's epoch 1 of 4 is done
    _wait_for(lambda: finished.exists() and sum_started.exists(), proc)
    assert proc.poll() is None, "compare ended before it could be interrupted in its second fusion"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.decode().strip().splitlines()[-1] == ("mmfuse: error: compare interrupted at fusion sum; the 1 "
                                                        "fusion(s) finished so far are kept: run the same command again to continue")
    kept = json.loads(finished.read_text())["row"]
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    assert "fusion concat: trained and scored by the interrupted comparison (run tiny-concat), kept" in res.stderr
    board = json.loads((workspace / "compare" / "tiny" / "leaderboard.json").read_text())
    assert sorted(r["fusion"] for r in board["rows"]) == ["concat", "sum"]
    assert next(r for r in board["rows"] if r["fusion"] == "concat") == kept
    assert not finished.parent.exists()
