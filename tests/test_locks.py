"""Locks: many processes entering one lock at the same instant never hold it together; readers
share it while a writer is refused (and the other way round), with one line naming the holder;
a lock is released by the kernel when its holder dies, and never broken by deleting its file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmfuse.errors import MmfuseError
from mmfuse.workspace import exclusive, lock_path, shared

PROCESSES, ROUNDS = 16, 50


def _contender(target: str, barrier, results, rounds: int) -> None:
    """Each round: wait for all, then try the lock at once; while holding it, claim a marker file
    that only one process may have (O_EXCL) and hold it a moment."""
    marker = Path(target).parent / "holder"
    for round_ in range(rounds):
        barrier.wait()
        outcome = "refused"
        try:
            with exclusive(Path(target), "the target"):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    outcome = "two holders"
                else:
                    time.sleep(0.002)
                    os.close(fd)
                    os.unlink(marker)
                    outcome = "held"
        except MmfuseError as exc:
            if "is being written by another mmfuse process" not in str(exc):
                outcome = f"bad message: {exc}"
        results.put((round_, outcome))
        barrier.wait()


def test_many_processes_released_at_once_never_hold_the_lock_together(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    target = tmp_path / "datasets" / "d"
    procs = [ctx.Process(target=_contender, args=(str(target), barrier, results, ROUNDS)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in range(PROCESSES * ROUNDS)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    per_round: dict[int, list[str]] = {}
    for round_, outcome in outcomes:
        per_round.setdefault(round_, []).append(outcome)
    assert len(per_round) == ROUNDS
    for round_, seen in per_round.items():
        assert "two holders" not in seen and not [s for s in seen if s.startswith("bad")], (round_, seen)
        assert seen.count("held") >= 1, (round_, seen)  # somebody got it every time
    assert not lock_path(target).exists()  # the last holder removed the file


_HOLD = """
import sys, time
from pathlib import Path
from mmfuse.workspace import exclusive, shared
hold = exclusive if sys.argv[1] == "write" else shared
with hold(Path(sys.argv[2]), "data set 'd'"):
    print("holding", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process holding ``target``'s lock (``write`` or ``read``); kill it afterwards."""
    procs = []

    def start(kind: str, target: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD, kind, str(target)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "holding"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_readers_share_the_lock_and_a_writer_is_refused_naming_them(tmp_path: Path, holder) -> None:
    target = tmp_path / "datasets" / "d"
    target.mkdir(parents=True)
    reader = holder("read", target)
    with shared(target, "data set 'd'"):  # a second reader is welcome
        pass
    with pytest.raises(MmfuseError) as err:
        with exclusive(target, "data set 'd'"):
            pass
    assert str(err.value).startswith(f"data set 'd' is in use by another mmfuse process (pid {reader.pid}")
    assert "wait for it to finish" in str(err.value)


def test_a_reader_is_refused_while_a_writer_holds_the_lock_naming_it(tmp_path: Path, holder) -> None:
    target = tmp_path / "datasets" / "d"
    writer = holder("write", target)
    for hold in (shared, exclusive):
        with pytest.raises(MmfuseError) as err:
            with hold(target, "data set 'd'"):
                pass
        assert str(err.value).startswith(f"data set 'd' is being written by another mmfuse process (pid {writer.pid} ")


def test_a_dead_holders_lock_is_free_and_an_unreadable_lock_file_is_never_removed(tmp_path: Path, holder) -> None:
    target = tmp_path / "datasets" / "d"
    proc = holder("write", target)
    proc.kill()
    proc.wait()
    assert lock_path(target).exists()  # kill -9 left the file, but the kernel released the lock
    with exclusive(target, "data set 'd'"):
        pass
    # a lock file holding garbage, held by a live process: reported as held, not taken for stale
    proc = holder("write", target)
    lock_path(target).write_bytes(b"\x00garbage")
    with pytest.raises(MmfuseError) as err:
        with exclusive(target, "data set 'd'"):
            pass
    assert "is being written by another mmfuse process (its lock" in str(err.value)
    assert lock_path(target).read_bytes() == b"\x00garbage"


def test_the_lock_file_records_the_writer(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "r"
    with exclusive(target, "run 'r'"):
        record = json.loads(lock_path(target).read_text())
        assert record["pid"] == os.getpid() and record["command"].startswith("mmfuse")
