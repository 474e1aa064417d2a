"""`mmfuse.beside`: a generator run in a forked child process, exchanging values with the parent, and
the parent running it itself wherever the child cannot."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Generator

import pytest

from mmfuse import beside


@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beside, "usable_cpus", lambda: 2)


def swap_and_add() -> Generator[tuple[int, list[int]], list[int], tuple[int, int]]:
    """Yield this process's id and a large list; get a list back; return the process id and the sum."""
    theirs = yield os.getpid(), list(range(100_000))
    return os.getpid(), sum(theirs)


def test_the_work_runs_in_another_process_and_values_go_both_ways(two_cpus: None) -> None:
    parent = os.getpid()
    with beside.beside(swap_and_add) as other:
        pid, numbers = other.exchange(list(range(200_000)))
        assert pid != parent  # it ran in a child
        assert numbers == list(range(100_000))  # more than a pipe's buffer, each way
        assert other.result() == (pid, sum(range(200_000)))


@pytest.mark.parametrize("when", ["before yielding", "after the exchange"])
@pytest.mark.parametrize("how", ["raises", "killed"])
def test_a_child_that_fails_leaves_the_work_to_the_parent_with_the_same_answers(two_cpus: None, how: str,
                                                                                when: str) -> None:
    parent = os.getpid()

    def fail() -> None:
        if os.getpid() != parent:
            if how == "raises":
                raise MemoryError("the child ran out")
            os.kill(os.getpid(), signal.SIGKILL)

    def work() -> Generator[int, int, tuple[int, int]]:
        if when == "before yielding":
            fail()
        answer = yield 7
        if when == "after the exchange":
            fail()
        return os.getpid(), answer * 2

    with beside.beside(work) as other:
        assert other.exchange(21) == 7
        assert other.result() == (parent, 42)  # run here, the answer replayed


def test_with_one_cpu_the_work_runs_here_a_step_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(beside, "usable_cpus", lambda: 1)
    ran: list[str] = []

    def work() -> Generator[str, str, str]:
        ran.append("first")
        answer = yield "a"
        ran.append(answer)
        return "done"

    with beside.beside(work) as other:
        assert ran == []  # nothing before it is asked
        assert other.exchange("b") == "a" and ran == ["first"]
        assert other.result() == "done" and ran == ["first", "b"]


@pytest.mark.parametrize("cpus", [1, 2])
def test_exchanging_more_or_fewer_values_than_the_work_yields_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                                       cpus: int) -> None:
    monkeypatch.setattr(beside, "usable_cpus", lambda: cpus)

    def once() -> Generator[int, int, int]:
        answer = yield 1
        return answer

    with beside.beside(once) as other:
        other.exchange(2)
        with pytest.raises(beside.WorkMismatch):
            other.exchange(3)
    with beside.beside(once) as other:
        with pytest.raises(beside.WorkMismatch):
            other.result()


def test_leaving_the_block_before_the_result_stops_the_child(two_cpus: None) -> None:
    """An error (or Ctrl-C) in the parent while the child works: no process outlives the block."""

    def sleeper() -> Generator[None, None, None]:
        time.sleep(60)
        yield

    with pytest.raises(RuntimeError, match="parent failed"):
        with beside.beside(sleeper) as other:
            assert isinstance(other, beside._Forked)
            pid = other.pid
            raise RuntimeError("parent failed")
    with pytest.raises(ChildProcessError):  # stopped and reaped: it is no child of ours any more
        os.waitpid(pid, os.WNOHANG)


def test_a_child_that_has_returned_its_result_is_reaped_without_holding_the_parent(
        two_cpus: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child's exit is waited for by a thread: result() returns before, and no zombie is left."""
    real_waitpid = os.waitpid

    def slow_waitpid(pid: int, options: int) -> tuple[int, int]:
        time.sleep(0.5)  # a slow exit
        return real_waitpid(pid, options)

    monkeypatch.setattr(beside.os, "waitpid", slow_waitpid)
    with beside.beside(swap_and_add) as other:
        pid, _ = other.exchange([1])
        start = time.perf_counter()
        assert other.result() == (pid, 1)
        assert time.perf_counter() - start < 0.4  # not held up by the wait
    reapers = [t for t in threading.enumerate() if t.name == f"reap {pid}"]
    assert len(reapers) == 1
    reapers[0].join(10)
    monkeypatch.undo()
    with pytest.raises(ChildProcessError):  # reaped: no child of ours any more
        os.waitpid(pid, os.WNOHANG)


def test_a_given_answer_waits_for_the_child_without_holding_the_parent(two_cpus: None) -> None:
    """give(): the parent hands over an answer far larger than a pipe's buffer while the child is still
    busy (here: until the parent lets it go on), and goes on at once; the child takes it when it asks,
    and the value it yielded there is dropped."""
    go_read, go_write = os.pipe()

    def work() -> Generator[str, bytes, tuple[int, int]]:
        os.read(go_read, 1)  # busy until the parent has given
        data = yield "dropped"
        answer = yield f"got {len(data)}"
        return len(data), answer

    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("give() waited for the child"))
    try:
        with beside.beside(work) as other:
            assert isinstance(other, beside._Forked)
            signal.alarm(10)
            other.give(b"x" * 4_000_000)
            signal.alarm(0)
            os.write(go_write, b"g")
            assert other.exchange(7) == "got 4000000"
            assert other.result() == (4_000_000, 7)
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.close(go_read)
        os.close(go_write)


@pytest.mark.parametrize("cpus", [1, 2])
def test_given_answers_reach_the_work_here_and_in_a_child_that_fails(monkeypatch: pytest.MonkeyPatch,
                                                                     cpus: int) -> None:
    """With one CPU the work runs here, given answers and all; a child that fails after it took a given
    answer leaves the work to the parent, which replays it."""
    monkeypatch.setattr(beside, "usable_cpus", lambda: cpus)
    parent = os.getpid()

    def work() -> Generator[int, list[int], tuple[int, int]]:
        first = yield 0
        second = yield 1
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid(), sum(first) + sum(second)

    with beside.beside(work) as other:
        other.give(list(range(100_000)))
        other.give([1, 2])
        assert other.result() == (parent, sum(range(100_000)) + 3)


def test_the_shared_file_is_closed_with_the_child(two_cpus: None) -> None:
    before = len(os.listdir("/dev/fd"))
    with beside.beside(swap_and_add) as other:
        other.give([1])
        assert len(os.listdir("/dev/fd")) == before + 3  # two pipe ends and the shared file
        other.result()
    assert len(os.listdir("/dev/fd")) == before
