"""Work for the second CPU core while this process goes on: a generator run in a forked child process,
exchanging values with this one.

Scoring a large caption set is a few hundred milliseconds of single-threaded work (the tokenizer is
Python, the n-gram statistics many numpy passes that hold the GIL between them), so the caption
metrics give half of it to a child process. The work is a generator function: each value it yields
comes to this process, which answers with one of its own, and its return value is the result::

    def second_half():
        mine = tokenize(second)
        theirs = yield mine  # each half needs the other's tokens
        return statistics(theirs + mine)

    with beside(second_half) as other:
        mine = tokenize(first)
        theirs = other.exchange(mine)
        ...
        result = other.result()

The child can be started before the work's input exists: it gets ready (imports what it needs, say)
while this process reads the input, which it then hands over with :meth:`Pending.give`, without waiting
for the child to read it::

    def second_half():
        import numpy  # meanwhile, in the child
        texts = yield None  # given
        ...

    with beside(second_half) as other:
        texts = read_files()
        other.give(texts[cut:])
        ...

One child does every step rather than a child per step: scoring 8,092 images, a second fork for the
second step made 15k more page faults over the two processes (copy-on-write of the larger heap by
then) than sending each half's 2.4 MB of tokens through the pipes (about 12 ms). In wall time the
difference is within this machine's noise (alternating runs of the whole command: 35 and 10 ms
faster, and once 20 ms slower, in three sets of 20-30 pairs).

Written over ``os.fork`` rather than ``concurrent.futures`` or ``multiprocessing``: importing
``concurrent.futures.process`` takes 56 ms and ``multiprocessing`` 14 ms (``python -X importtime``, on
a 2-core machine where the whole scoring command takes about 0.7 s), and both pickle the function's
inputs to the worker, where a forked child already holds what existed at the fork; only what the work
yields and returns, and what it is given, travels, pickled, through pipes (and the shared file).

Where ``os.fork`` is missing (Windows) or one CPU is all this process may use, the generator runs in
this process, a step each time this process asks for the next value. If the child fails in any way (an
error, killed for memory), this process runs the generator itself from the start, sending it the same
answers: a result always comes, the same one.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import threading
import warnings
from typing import IO, Any, Callable, Generator, Generic, Protocol, TypeVar

Y = TypeVar("Y")  # what the work yields
S = TypeVar("S")  # what it is answered
T = TypeVar("T")  # what it returns
Y_co = TypeVar("Y_co", covariant=True)
S_contra = TypeVar("S_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)
Work = Callable[[], Generator[Y, S, T]]

_HEADER = struct.Struct("<cQ")  # message kind, payload length
_YIELDED, _RETURNED, _SHELVED = b"y", b"r", b"s"  # _SHELVED: a given answer, its payload in the shared file


class Pending(Protocol[Y_co, S_contra, T_co]):
    """Work under way. As a context manager: leaving the block before :meth:`result` (an error, Ctrl-C)
    stops the child, so no process outlives the command."""

    def exchange(self, answer: S_contra) -> Y_co:
        """The work's next yielded value (waits for it); ``answer`` becomes the value of that ``yield``."""
        ...

    def give(self, answer: S_contra) -> None:
        """Answer the work's next ``yield`` without waiting, neither for the value it yields there (which
        is dropped) nor for the child to take the answer, however large: it waits in a file both
        processes hold, where a pipe holds 64 KiB."""
        ...

    def result(self) -> T_co:
        """What the work returns (waits for it), once every value it yields has been exchanged."""
        ...

    def cancel(self) -> None:
        """Stop the work if its result has not been taken (nothing otherwise)."""
        ...

    def __enter__(self) -> "Pending[Y_co, S_contra, T_co]": ...

    def __exit__(self, *exc: object) -> None: ...


class WorkMismatch(RuntimeError):
    """The work yielded a different number of values than were exchanged (a bug in the caller)."""


def usable_cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def can_fork() -> bool:
    return hasattr(os, "fork") and usable_cpus() >= 2


def beside(work: Work[Y, S, T]) -> Pending[Y, S, T]:
    """Start the generator function ``work`` in a child process (or, where that cannot help, step by
    step in this one)."""
    if not can_fork():
        return _Here(work)
    child_reads, parent_writes = os.pipe()  # (read end, write end)
    parent_reads, child_writes = os.pipe()
    shelf = _Shelf(_shared_file())
    with warnings.catch_warnings():  # Python >= 3.12 warns when numpy's BLAS threads exist; the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child never returns from here, whatever happens
        try:
            os.close(parent_writes)
            os.close(parent_reads)
            _child(work, os.fdopen(child_reads, "rb"), os.fdopen(child_writes, "wb"), shelf)
        finally:
            os._exit(1)
    os.close(child_reads)
    os.close(child_writes)
    return _Forked(work, pid, os.fdopen(parent_writes, "wb"), os.fdopen(parent_reads, "rb"), shelf)


def _shared_file() -> int:
    """A file descriptor of an anonymous file, in memory where the system has ``memfd_create`` (Linux),
    else an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("mmfuse-beside", os.MFD_CLOEXEC)
    import tempfile

    fd, path = tempfile.mkstemp(prefix="mmfuse-beside-")
    os.unlink(path)
    return fd


class _Shelf:
    """The file for given answers, opened before the fork: the parent appends each payload, the child
    reads them in the same order."""

    def __init__(self, fd: int):
        self.fd, self.at = fd, 0

    def put(self, payload: bytes) -> None:
        view = memoryview(payload)
        while view:
            written = os.pwrite(self.fd, view, self.at)
            self.at += written
            view = view[written:]

    def take(self, size: int) -> bytes:
        payload = os.pread(self.fd, size, self.at)
        if len(payload) < size:
            raise EOFError("the given answer is not all there")
        self.at += size
        return payload

    def close(self) -> None:
        os.close(self.fd)


def _child(work: Work[Any, Any, Any], answers: IO[bytes], out: IO[bytes], shelf: _Shelf) -> None:
    """Run the generator, sending each yielded value and the return value and reading each answer; leave
    without running the parent's exit handlers or flushing its buffers (``os._exit``). A failure ends
    the child, and the parent sees the pipe close before the message it waits for."""
    status = 1
    try:
        steps = work()
        value = next(steps)
        while True:
            _send(out, _YIELDED, value)
            value = steps.send(_receive(answers, _YIELDED, shelf))
    except StopIteration as done:
        try:
            _send(out, _RETURNED, done.value)
            status = 0
        except BaseException:
            pass
    except BaseException:  # the parent runs the work itself
        pass
    finally:
        os._exit(status)


def _send(out: IO[bytes], kind: bytes, value: object) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _receive(pipe: IO[bytes], kind: bytes, shelf: _Shelf | None = None) -> Any:
    """The next message's value; EOFError if the other end closed first or sent another kind. An
    answer sent as ``_SHELVED`` (the child's end only) is read from the ``shelf``."""
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other process went away")
    got, size = _HEADER.unpack(header)
    if got == _SHELVED and shelf is not None:
        return pickle.loads(shelf.take(size))
    payload = pipe.read(size)
    if got != kind or len(payload) < size:
        raise EOFError("the other process went away")
    return pickle.loads(payload)


def _reap(pid: int) -> None:
    """Wait for a child that is exiting, so that it leaves no zombie. The wait is a thread's: scoring
    8,092 images, the child's exit (its memory handed back) took 4-5 ms, which this process spent
    waiting before it went on to write the report. (asyncio's ``ThreadedChildWatcher`` waits the same
    way.)"""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # pragma: no cover - reaped elsewhere (a SIGCHLD handler of the program)
        pass


class _Here(Generic[Y, S, T]):
    """The work run step by step in this process."""

    def __init__(self, work: Work[Y, S, T]):
        self.steps = work()
        self.started = False
        self.answer: Any = None

    def exchange(self, answer: S) -> Y:
        try:
            value = self._step()
        except StopIteration:
            raise WorkMismatch("the work returned where a value was to be exchanged") from None
        self.answer = answer
        return value

    def give(self, answer: S) -> None:
        self.exchange(answer)

    def result(self) -> T:
        try:
            self._step()
        except StopIteration as done:
            return done.value
        raise WorkMismatch("the work yielded a value that nothing exchanged")

    def _step(self) -> Y:
        if not self.started:
            self.started = True
            return next(self.steps)
        return self.steps.send(self.answer)

    def cancel(self) -> None:
        self.steps.close()

    def __enter__(self) -> "_Here[Y, S, T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class _Forked(Generic[Y, S, T]):
    """The work in a child process; after the child fails, in this one (:class:`_Here`), replayed."""

    def __init__(self, work: Work[Y, S, T], pid: int, to_child: IO[bytes], from_child: IO[bytes], shelf: _Shelf):
        self.work, self.pid, self.to_child, self.from_child, self.shelf = work, pid, to_child, from_child, shelf
        self.answers: list[S] = []  # every answer sent, to replay the work here if the child fails
        self.dropped = 0  # values the child yielded where it was given its answer, not read yet
        self.here: _Here[Y, S, T] | None = None
        self.taken = False

    def give(self, answer: S) -> None:
        if self.here is None:
            try:
                payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
                self.shelf.put(payload)
                self.to_child.write(_HEADER.pack(_SHELVED, len(payload)))
                self.to_child.flush()
                self.answers.append(answer)
                self.dropped += 1
                return
            except OSError:  # the child is gone (or the file could not grow): the work is done here
                self._take_over()
        assert self.here is not None
        self.answers.append(answer)
        self.here.give(answer)

    def _next(self, kind: bytes) -> Any:
        """The child's next message of ``kind``, after the values it yielded where it was given answers."""
        while self.dropped:
            _receive(self.from_child, _YIELDED)
            self.dropped -= 1
        return _receive(self.from_child, kind)

    def exchange(self, answer: S) -> Y:
        if self.here is None:
            try:
                value = self._next(_YIELDED)
                _send(self.to_child, _YIELDED, answer)
                self.answers.append(answer)
                return value
            except (EOFError, OSError):  # died, or returned early: what it returns is found here
                self._take_over()
        assert self.here is not None
        self.answers.append(answer)
        return self.here.exchange(answer)

    def result(self) -> T:
        if self.here is None:
            try:
                value = self._next(_RETURNED)
                self._end_child(kill=False)  # it is exiting: reaped meanwhile
                return value
            except (EOFError, OSError):
                self._take_over()
        assert self.here is not None
        return self.here.result()

    def _take_over(self) -> None:
        """Replay the work here up to where the child was, with the same answers."""
        self._end_child(kill=True)
        self.here = _Here(self.work)
        for answer in self.answers:
            self.here.exchange(answer)

    def _end_child(self, kill: bool) -> None:
        """Close the pipes and reap the child: a child stopped here before this returns; one that has
        sent its result and is exiting, by a thread (:func:`_reap`)."""
        if self.taken:
            return
        self.taken = True
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - reaped already
                pass
        for pipe in (self.to_child, self.from_child):
            try:
                pipe.close()
            except OSError:  # the child's end is gone: nothing buffered matters
                pass
        self.shelf.close()
        if kill:
            os.waitpid(self.pid, 0)
        else:
            threading.Thread(target=_reap, args=(self.pid,), name=f"reap {self.pid}", daemon=True).start()

    def cancel(self) -> None:
        self._end_child(kill=True)
        if self.here is not None:
            self.here.cancel()

    def __enter__(self) -> "_Forked[Y, S, T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
