"""Work for the second CPU core while this process goes on: a function run in a forked child process.

Scoring a large caption set is a few hundred milliseconds of single-threaded work (the tokenizer is
Python, the n-gram statistics many numpy passes that hold the GIL between them), so the caption
metrics give half of it to a child process. Written over ``os.fork`` rather than
``concurrent.futures`` or ``multiprocessing``: importing ``concurrent.futures.process`` takes 56 ms
and ``multiprocessing`` 14 ms (``python -X importtime``, on a 2-core machine where the whole scoring
command takes about 0.8 s), and both pickle the function's inputs to the worker, where a forked child
already holds them; only its result comes back, pickled through a pipe::

    with beside(lambda: work(second_half)) as other:
        mine = work(first_half)
        theirs = other.result()

Where ``os.fork`` is missing (Windows) or one CPU is all this process may use, the work runs in this
process when its result is asked for. If the child fails in any way (an error, killed for memory),
the parent runs the work itself: a result always comes, the same one.
"""

from __future__ import annotations

import os
import pickle
import signal
import warnings
from typing import Callable, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """Work under way. As a context manager: leaving the block before :meth:`result` (an error, Ctrl-C)
    stops the child, so no process outlives the command."""

    def result(self) -> T_co:
        """The work's result (waits for it)."""
        ...

    def cancel(self) -> None:
        """Stop the work if its result has not been taken (nothing otherwise)."""
        ...

    def __enter__(self) -> "Pending[T_co]": ...

    def __exit__(self, *exc: object) -> None: ...


def usable_cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def can_fork() -> bool:
    return hasattr(os, "fork") and usable_cpus() >= 2


def beside(work: Callable[[], T]) -> Pending[T]:
    """Start ``work`` in a child process (or, where that cannot help, later in this one)."""
    if not can_fork():
        return _Later(work)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns when numpy's BLAS threads exist; the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(work, write_end)
    os.close(write_end)
    return _Forked(work, pid, read_end)


def _child(work: Callable[[], object], write_end: int) -> None:
    """Run ``work``, send its pickled result, and leave without running the parent's exit handlers or
    flushing its buffers (``os._exit``); an empty message means it failed."""
    status = 1
    try:
        payload = pickle.dumps(work(), protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        status = 0
    except BaseException:  # the parent sees an empty pipe and does the work itself
        pass
    finally:
        os._exit(status)


class _Forked(Generic[T]):
    def __init__(self, work: Callable[[], T], pid: int, read_end: int):
        self.work, self.pid, self.read_end = work, pid, read_end
        self.taken = False

    def result(self) -> T:
        self.taken = True
        with os.fdopen(self.read_end, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not payload:
            return self.work()
        return pickle.loads(payload)

    def cancel(self) -> None:
        if self.taken:
            return
        self.taken = True
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.read_end)

    def __enter__(self) -> "_Forked[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class _Later(Generic[T]):
    def __init__(self, work: Callable[[], T]):
        self.work = work

    def result(self) -> T:
        return self.work()

    def cancel(self) -> None:
        pass

    def __enter__(self) -> "_Later[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        pass
