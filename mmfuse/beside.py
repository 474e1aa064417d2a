"""Work for the second CPU core while this process goes on: a function run in a forked child process.

Scoring a large caption set is a few hundred milliseconds of single-threaded work (the tokenizer is
Python, the n-gram statistics many numpy passes that hold the GIL between them), so the caption
metrics give half of it to a child process. Written over ``os.fork`` rather than
``concurrent.futures`` or ``multiprocessing``: importing ``concurrent.futures.process`` takes 56 ms
and ``multiprocessing`` 14 ms (``python -X importtime``, on a 2-core machine where the whole scoring
command is meant to take about 0.6 s), and both pickle the function's inputs to the worker, where a
forked child already holds them; only its result comes back, pickled through a pipe.

Where ``os.fork`` is missing (Windows) or one CPU is all this process may use, the work runs in this
process when its result is asked for. If the child fails in any way (an error, killed for memory),
the parent runs the work itself: a result always comes, the same one.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Callable, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    def result(self) -> T_co:
        """The work's result (waits for it)."""
        ...


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

    def result(self) -> T:
        with os.fdopen(self.read_end, "rb") as pipe:
            payload = pipe.read()
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not payload:
            return self.work()
        return pickle.loads(payload)


class _Later(Generic[T]):
    def __init__(self, work: Callable[[], T]):
        self.work = work

    def result(self) -> T:
        return self.work()
