"""`mmfuse.beside`: work in a forked child process, its result back in the parent, and the parent
doing the work itself wherever the child cannot."""

from __future__ import annotations

import os
import signal

import pytest

from mmfuse import beside


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beside, "usable_cpus", lambda: 2)


def test_the_work_runs_in_another_process_and_its_result_comes_back(two_cpus: None) -> None:
    parent = os.getpid()
    pending = beside.beside(lambda: (os.getpid(), list(range(100_000))))
    pid, numbers = pending.result()
    assert pid != parent  # it ran in a child
    assert numbers == list(range(100_000))  # more than a pipe's buffer comes back whole


@pytest.mark.parametrize("how", ["raises", "killed"])
def test_a_child_that_fails_leaves_the_work_to_the_parent(two_cpus: None, how: str) -> None:
    parent = os.getpid()

    def work() -> int:
        if os.getpid() != parent:
            if how == "raises":
                raise MemoryError("the child ran out")
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    assert beside.beside(work).result() == parent


def test_with_one_cpu_the_work_runs_here_when_its_result_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beside, "usable_cpus", lambda: 1)
    ran: list[int] = []
    pending = beside.beside(lambda: ran.append(os.getpid()) or "done")
    assert ran == []  # not yet
    assert pending.result() == "done" and ran == [os.getpid()]


def test_leaving_the_block_before_the_result_stops_the_child(two_cpus: None) -> None:
    """An error (or Ctrl-C) in the parent while the child works: no process outlives the block."""
    import time

    with pytest.raises(RuntimeError, match="parent failed"):
        with beside.beside(lambda: time.sleep(60)) as pending:
            pid = pending.pid
            raise RuntimeError("parent failed")
    with pytest.raises(ChildProcessError):  # stopped and reaped: it is no child of ours any more
        os.waitpid(pid, os.WNOHANG)
