"""The one place that says where artifacts live, and how they are written (atomically).

Layout under the workspace root (``--workspace``, else ``$MMFUSE_WORKSPACE``, else ``./workspace``)::

    datasets/<name>/manifest.json, vocab.json, {train,val,test}.jsonl, images/<split>/*.png
    runs/<run>/config.json, vocab.json, [labels.json], best.safetensors, last.safetensors,
               metrics.jsonl, eval-<split>.json, results-<split>.json
    compare/<name>/leaderboard.json, leaderboard.csv
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from mmfuse.errors import MmfuseError

ENV_VAR = "MMFUSE_WORKSPACE"
DEFAULT_DIRNAME = "workspace"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_workspace(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The workspace root: ``explicit``, else ``$MMFUSE_WORKSPACE``, else ``./workspace``."""
    env = os.environ.get(ENV_VAR)
    path = Path(explicit) if explicit else Path(env) if env else Path.cwd() / DEFAULT_DIRNAME
    try:
        return path.expanduser().resolve()
    except (RuntimeError, OSError):  # a symbolic link loop (RuntimeError before Python 3.13)
        raise MmfuseError(f"the workspace {_shown(path)} is a symbolic link loop; give a directory with "
                          f"--workspace (or ${ENV_VAR})") from None


def check_name(name: str, kind: str) -> str:
    """Reject names that are not safe single path components (``../x``, ``a/b``, empty)."""
    if not _NAME_RE.match(name or ""):
        raise MmfuseError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


COMPARED_RUNS = "runs.json"  # in compare/<name>/: the runs the comparison made


@dataclass(frozen=True)
class RunDir:
    """Every file of a run (``runs/<name>/``), named in this one place."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:  # the RunConfig it was trained with (JSON)
        return self.path / "config.json"

    @property
    def vocab(self) -> Path:  # its word list
        return self.path / "vocab.json"

    @property
    def labels(self) -> Path:  # classifiers: the class order of the output units
        return self.path / "labels.json"

    @property
    def metrics(self) -> Path:  # one JSON line per epoch
        return self.path / "metrics.jsonl"

    @property
    def steps(self) -> Path:  # one JSON line per logged optimiser step (loss, learning rate)
        return self.path / "steps.jsonl"

    @property
    def curves(self) -> Path:  # the training curves figure
        return self.path / "curves.png"

    @property
    def checkpoint(self) -> Path:  # the resumable state, while the run can be resumed
        return self.path / "checkpoint.safetensors"

    def report(self, split: str, suffix: str = "") -> Path:
        """evaluate's report of a split (``suffix``: the ablation, e.g. ``-ablate-image-shuffle``)."""
        return self.path / f"eval-{split}{suffix}.json"

    def results(self, split: str, suffix: str = "") -> Path:
        """evaluate's captions or predictions of a split, as a results file."""
        return self.path / f"results-{split}{suffix}.json"

    def weights(self, which: str) -> Path:
        """``best`` (the epoch with the best validation metric) or ``last``."""
        return self.path / f"{which}.safetensors"

    def history(self) -> list[dict[str, Any]]:
        """The per-epoch records of :attr:`metrics`."""
        return read_jsonl(self.metrics)


@dataclass(frozen=True)
class Workspace:
    """Paths of data sets and runs under one root directory."""

    root: Path

    @classmethod
    def open(cls, explicit: str | os.PathLike[str] | None = None) -> "Workspace":
        """The workspace at ``explicit`` (see :func:`resolve_workspace`); a path that exists but is
        not a directory (a file, a symbolic link loop) is one clear error."""
        root = resolve_workspace(explicit)
        problem = not_a_directory(root)
        if problem:
            raise MmfuseError(f"the workspace {_shown(root)} is {problem}; give a directory with --workspace "
                              f"(or ${ENV_VAR})")
        return cls(root)

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / check_name(name, "data set")

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / check_name(name, "run")

    def run(self, name: str) -> RunDir:
        """The files of run ``name`` (which may not exist yet)."""
        return RunDir(self.run_dir(name))

    def compare_dir(self, name: str) -> Path:
        return self.root / "compare" / check_name(name, "comparison")

    def existing_dataset(self, name: str) -> Path:
        """The directory of a prepared data set, or a clear error naming what to run."""
        path = self.dataset_dir(name)
        problem = not_a_directory(path)
        if problem:
            raise MmfuseError(f"data set {name!r}: {_shown(path)} is {problem}, not a data set directory; move it "
                              f"away, or prepare the data set under another --name")
        if not (path / "manifest.json").is_file():
            from mmfuse.registry import declared_names

            built_in = name in declared_names("source") and name.startswith("shapes")
            command = f"mmfuse prepare-data {name}" if built_in else f"mmfuse prepare-data SOURCE --name {name}"
            known = self.dataset_names()
            there = f"; data sets here: {', '.join(known)}" if known else ""
            raise MmfuseError(f"no data set {name!r} in workspace {self.root}{there} (run `{command}` first)")
        return path

    @contextmanager
    def reading_dataset(self, name: str) -> Iterator[Path]:
        """The directory of a prepared data set, held with a shared lock while the caller reads it, so
        that ``prepare-data`` cannot replace it meanwhile (it is refused, naming the reader)."""
        self.existing_dataset(name)
        with shared(self.dataset_dir(name), f"data set {name!r}"):
            yield self.existing_dataset(name)

    def compared_runs(self, comparison: str) -> list[str]:
        """The runs comparison ``comparison`` has made (or started): see ``mmfuse compare``."""
        path = self.compare_dir(comparison) / COMPARED_RUNS
        try:
            made = read_json(path, "comparison's run list") if path.is_file() else []
        except MmfuseError:
            return []
        return [r for r in made if isinstance(r, str)] if isinstance(made, list) else []

    def run_names(self) -> list[str]:
        """The runs of the workspace (directories with a config), sorted by name."""
        return _names_with(self.root / "runs", "config.json")

    def dataset_names(self) -> list[str]:
        """The prepared data sets of the workspace, sorted by name."""
        return _names_with(self.root / "datasets", "manifest.json")

    def latest_run(self) -> str:
        """The run whose training started last; a workspace without runs says how to make one."""
        names = self.run_names()
        if not names:
            raise MmfuseError(f"no runs in workspace {self.root} yet: train one first, e.g. `mmfuse prepare-data "
                              f"shapes` then `mmfuse train --data shapes --run demo` (or give --workspace)")
        return max(names, key=lambda n: (self.run(n).config.stat().st_mtime_ns, n))

    def existing_run(self, name: str) -> Path:
        """The directory of a trained run, or a clear error listing the runs there are."""
        path = self.run_dir(name)
        problem = not_a_directory(path)
        if problem:
            raise MmfuseError(f"run {name!r}: {_shown(path)} is {problem}, not a run directory; move it away, or "
                              f"name another run")
        if not (path / "config.json").is_file():
            known = self.run_names()
            hint = f"; runs: {', '.join(known)}" if known else \
                "; train one first, e.g. `mmfuse prepare-data shapes` then `mmfuse train --data shapes --run demo`"
            raise MmfuseError(f"no run {name!r} in workspace {self.root}{hint}")
        return path


def _names_with(folder: Path, marker: str) -> list[str]:
    """Names of the sub-directories of ``folder`` that hold ``marker`` (none when it is missing)."""
    try:
        return sorted(p.name for p in folder.iterdir() if (p / marker).is_file())
    except OSError:
        return []


def os_problem(exc: OSError | ValueError) -> str:
    """A file-system error that a typed path can cause, in words ("a symbolic link loop", ...)."""
    code = getattr(exc, "errno", None) or 0
    return _OPEN_PROBLEMS.get(code, getattr(exc, "strerror", None) or str(exc))


def not_a_directory(path: Path) -> str | None:
    """What ``path`` is when it exists but is not a directory ("a file", "a symbolic link loop",
    ...), else None (a directory, or nothing there)."""
    try:
        kind = stat.S_IFMT(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return os_problem(exc)
    if kind == stat.S_IFDIR:
        return None
    return "a file" if kind == stat.S_IFREG else _KINDS.get(kind, "not a directory")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised while writing it (a failed ``write()`` says "No space
    left on device" but not on which file)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary_beside(path)
    try:
        with writing(path), os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a second name of ``source`` (a hard link: no second copy on disk), replacing it
    atomically; where the file system has no hard links, an atomic copy."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write_bytes(target, source.read_bytes())
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once (os.umask can only be read by setting it)


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new hidden temporary file in ``path``'s directory, with the permissions any new file gets
    under the umask (mkstemp's are 0600; an error names ``path``, not the temporary)."""
    import tempfile  # here: 1.6 ms of every command's start otherwise (with random), and scoring files makes none

    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.fchmod(fd, 0o666 & ~UMASK)
    return fd, name


def check_writable(folder: Path) -> None:
    """Fail now, with the usual error, when no file can be made in ``folder`` (a read-only workspace),
    rather than after the work whose results were to go there."""
    fd, tmp = _temporary_beside(folder / ".write-check")
    os.close(fd)
    os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, stable floats) so equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a log file, one per line (none when it is missing or unreadable; a
    damaged line is left out): for logs mmfuse writes itself, never for user input."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning a missing, malformed or non-regular file into one clear error."""
    if not os.path.lexists(path):
        raise MmfuseError(f"{what} is missing: {path}")
    with open_regular(path, what) as handle:
        data = handle.read()
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmfuseError(f"{what} is not valid JSON: {path}: {exc}") from None


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
_OPEN_PROBLEMS = {errno.ELOOP: "a symbolic link loop", errno.ENAMETOOLONG: "a name too long for the file system",
                  errno.ENOTDIR: "a path through something that is not a directory"}


def open_regular(path: str | os.PathLike[str], what: str) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (following symbolic links), or raise
    one clear error naming it. The open never blocks: a named pipe, socket or device is refused
    (reading one would wait forever for a writer), and so is a directory.

    Args:
        what: what the file is for the user ("image", "caption file"), as the error names it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MmfuseError(f"{what} not found: {_shown(path)}") from None
    except OSError as exc:
        if exc.errno in _OPEN_PROBLEMS:
            raise MmfuseError(f"cannot open {what} {_shown(path)}: {_OPEN_PROBLEMS[exc.errno]}") from None
        raise OSError(exc.errno, exc.strerror, _shown(path)) from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        article = "an" if what[:1] in "aeiou" else "a"
        raise MmfuseError(f"not {article} {what} file ({_KINDS.get(kind, 'not a regular file')}): {_shown(path)}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as a message shows it: one line, printable whatever bytes its name holds."""
    return printable(os.fspath(path))


def printable(text: str) -> str:
    """``text`` with backslash escapes where it would not stay on one printable line: ``\\\\``,
    ``\\t``, ``\\n``, ``\\r``, ``\\xHH`` for a byte (an ASCII control character, or a byte of a file
    name that is not valid UTF-8, which Python holds as a surrogate escape) and ``\\uHHHH`` /
    ``\\UHHHHHHHH`` for another unprintable character. Undoing the escapes gives the exact bytes
    back (the TSV outputs use it for paths and texts)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def json_path(path: str | os.PathLike[str], key: str = "path") -> dict[str, str]:
    """A path as JSON output fields: ``{key: name}``; a name that is not valid UTF-8 (a file
    system allows any bytes) has its undecodable bytes shown as U+FFFD there, and its exact bytes,
    base64-encoded, in ``{key}_bytes``, so that JSON output stays valid and can name the file."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return {key: text}
    except UnicodeEncodeError:
        raw = os.fsencode(text)
        import base64  # (rarely needed: every command would pay its import)

        return {key: raw.decode("utf-8", "replace"), f"{key}_bytes": base64.b64encode(raw).decode("ascii")}


@contextmanager
def exclusive(target: Path, what: str) -> Iterator[None]:
    """Hold ``target``'s lock (a data set or run directory) alone while writing it.

    The lock is ``flock(2)`` on the file ``.<name>.lock`` beside ``target``: taken atomically by the
    kernel, released by it when the process ends however it ends (kill -9 included), so a lock is
    never stale and never removed to break it. Another holder (a writer, or a reader holding
    :func:`shared`) is refused with one line naming it. The lock file records this process (pid,
    host, start, command) for those messages."""
    with _flocked(target, what, exclusive=True):
        yield


@contextmanager
def shared(target: Path, what: str) -> Iterator[None]:
    """Hold ``target``'s lock together with other readers (a training reading its data set): a
    writer (:func:`exclusive`) cannot replace ``target`` meanwhile, and a target being written is
    refused with one line. Where the lock cannot be created because the workspace is read-only,
    nothing can write the target either, and reading goes on without it."""
    with _flocked(target, what, exclusive=False):
        yield


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextmanager
def _flocked(target: Path, what: str, exclusive: bool) -> Iterator[None]:
    import fcntl

    lock = lock_path(target)
    fd = _acquire(lock, what, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        if exclusive and fd is not None:
            _record_holder(fd)
        yield
    finally:
        if fd is not None:
            _release(fd, lock)


def _acquire(lock: Path, what: str, mode: int) -> int | None:
    """An open descriptor of ``lock`` holding ``flock`` ``mode`` (None: a reader in a read-only
    workspace). A lock file its last holder removed between our open and flock is opened again."""
    import fcntl

    for _ in range(1000):
        fd = _open_lock(lock, reader=mode == fcntl.LOCK_SH)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            message = _refusal(fd, lock, what, mode)
            os.close(fd)
            raise MmfuseError(message) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock):
            return fd
        os.close(fd)  # we locked a file that is no longer at that path: take the one that is
    raise MmfuseError(f"could not lock {what}: {lock} keeps being replaced")


def _open_lock(lock: Path, reader: bool) -> int | None:
    if not reader:
        lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if reader:
            return None  # no folder, so no target to read (nor to replace)
        raise
    except OSError as exc:
        if not reader or exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise OSError(exc.errno, exc.strerror, str(lock)) from None
    try:  # a reader in a workspace it cannot write: lock the file if there is one
        return os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no writer can create it either, so nobody can replace what we read
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(lock)) from None


def _same_file(fd: int, lock: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(lock)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _record_holder(fd: int) -> None:
    import socket  # (only a writer needs it: a command that writes nothing would pay its import)

    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": _command_line(os.getpid())}
    data = json.dumps(me).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _release(fd: int, lock: Path) -> None:
    """Unlock; the last holder removes the lock file (only while it holds it alone, so a process
    that opened it meanwhile notices, see :func:`_acquire`)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(fd, lock):
            lock.unlink(missing_ok=True)
    except OSError:
        pass  # another reader still holds it (it removes it), or the workspace is read-only
    finally:
        os.close(fd)


def _refusal(fd: int, lock: Path, what: str, mode: int) -> str:
    """The one line saying who holds ``lock``: the writer its file names, or the processes the
    kernel lists as holding it (readers)."""
    holders = _kernel_holders(fd)
    writer = _recorded_holder(fd)
    readers = [h for h in holders if not h[1]]
    if readers and not any(h[1] for h in holders):
        names = "; ".join(f"pid {pid}{_described(pid)}" for pid, _ in readers[:3])
        more = f" and {len(readers) - 3} more" if len(readers) > 3 else ""
        return f"{what} is in use by another mmfuse process ({names}{more}); wait for it to finish"
    if writer is None:
        return (f"{what} is being written by another mmfuse process (its lock {lock} does not say which); "
                f"wait for it to finish")
    command = f": {writer['command']}" if writer.get("command") else ""
    return (f"{what} is being written by another mmfuse process (pid {writer.get('pid')} on {writer.get('host')}, "
            f"since {writer.get('started')}{command}); wait for it to finish")


def _recorded_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _kernel_holders(fd: int) -> list[tuple[int, bool]]:
    """(pid, exclusive) of each flock on ``fd``'s file, from Linux's /proc/locks ([] elsewhere)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a process waiting for the lock, not holding it
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == inode:
            holders.append((int(parts[4]), parts[3] == "WRITE"))
    return holders


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    if args and Path(args[0]).name.startswith("python"):  # python [-m mmfuse | path/to/mmfuse] ARGS
        args = args[1:]
        args = args[2:] if args[:2] == ["-m", "mmfuse"] else args
    if args and Path(args[0]).name == "mmfuse":
        args = args[1:]
    text = printable("mmfuse " + " ".join(args))  # one line, whatever the arguments hold
    return text if len(text) <= 200 else text[:197] + "..."


def _described(pid: int) -> str:
    command = _command_line(pid)
    return f": {command}" if command.strip() != "mmfuse" else ""


@contextmanager
def staged_directory(final: Path, clear_leftovers: bool = False) -> Iterator[Path]:
    """Build a directory in a hidden sibling, then swap it into place in one rename.

    On any error (or Ctrl-C) the staging directory is removed and ``final`` is left as it was.
    ``clear_leftovers`` (only while holding ``final``'s lock, see :func:`exclusive`): first remove
    the staging and replaced directories a killed process (kill -9) left beside ``final``.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if clear_leftovers:
        moved_away = [old / final.name for old in final.parent.glob(f".{final.name}.old-*") if (old / final.name).is_dir()]
        if not final.exists() and moved_away:  # killed between the two renames of replace_directory
            os.replace(moved_away[0], final)
        for pattern in (f".{final.name}.staging-*", f".{final.name}.old-*"):
            for leftover in final.parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
    import tempfile

    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    staging.chmod(0o777 & ~UMASK)  # it becomes the directory: the permissions of any new one (mkdtemp's are 0700)
    try:
        yield staging
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(new: Path, final: Path) -> None:
    """Move ``new`` to ``final``, replacing an existing directory there."""
    if not final.exists():
        os.replace(new, final)
        return
    import tempfile

    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, trash / final.name)
    os.replace(new, final)
    shutil.rmtree(trash, ignore_errors=True)
