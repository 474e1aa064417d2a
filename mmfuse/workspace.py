"""The one place that says where artifacts live, and how they are written (atomically).

Layout under the workspace root (``--workspace``, else ``$MMFUSE_WORKSPACE``, else ``./workspace``)::

    datasets/<name>/manifest.json, vocab.json, {train,val,test}.jsonl, images/<split>/*.png
    runs/<run>/config.json, vocab.json, [labels.json], best.safetensors, last.safetensors,
               metrics.jsonl, eval-<split>.json, results-<split>.json
    compare/<name>/leaderboard.json, leaderboard.csv
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmfuse.errors import MmfuseError

ENV_VAR = "MMFUSE_WORKSPACE"
DEFAULT_DIRNAME = "workspace"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def resolve_workspace(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The workspace root: ``explicit``, else ``$MMFUSE_WORKSPACE``, else ``./workspace``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.cwd() / DEFAULT_DIRNAME).resolve()


def check_name(name: str, kind: str) -> str:
    """Reject names that are not safe single path components (``../x``, ``a/b``, empty)."""
    if not _NAME_RE.match(name or ""):
        raise MmfuseError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class Workspace:
    """Paths of data sets and runs under one root directory."""

    root: Path

    @classmethod
    def open(cls, explicit: str | os.PathLike[str] | None = None) -> "Workspace":
        return cls(resolve_workspace(explicit))

    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / check_name(name, "data set")

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / check_name(name, "run")

    def compare_dir(self, name: str) -> Path:
        return self.root / "compare" / check_name(name, "comparison")

    def existing_dataset(self, name: str) -> Path:
        """The directory of a prepared data set, or a clear error naming what to run."""
        path = self.dataset_dir(name)
        if not (path / "manifest.json").is_file():
            raise MmfuseError(
                f"no data set {name!r} in workspace {self.root} "
                f"(run `mmfuse prepare-data SOURCE --name {name}` first)"
            )
        return path

    def existing_run(self, name: str) -> Path:
        """The directory of a trained run, or a clear error listing the runs there are."""
        path = self.run_dir(name)
        if not (path / "config.json").is_file():
            runs_dir = self.root / "runs"
            known = sorted(p.name for p in runs_dir.iterdir() if (p / "config.json").is_file()) if runs_dir.is_dir() else []
            hint = f"; runs: {', '.join(known)}" if known else "; train one with `mmfuse train`"
            raise MmfuseError(f"no run {name!r} in workspace {self.root}{hint}")
        return path


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


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new hidden temporary file in ``path``'s directory (an error names ``path``, not the temporary)."""
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


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


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (metrics logs); the file is rewritten atomically."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file, turning a missing or malformed file into one clear error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MmfuseError(f"{what} is missing: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmfuseError(f"{what} is not valid JSON: {path}: {exc}") from None


@contextmanager
def exclusive(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of ``target`` (a data set or run directory) while writing it: the file
    ``.<name>.lock`` beside it, created exclusively, holding this process's id and host. Another
    live process's lock is refused with one line; a lock left by a dead process on this host is
    cleared. The lock file is removed on the way out, whatever happens."""
    lock = target.parent / f".{target.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is None or _is_dead(holder):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise MmfuseError(f"{what} is being written by another mmfuse process (pid {holder.get('pid')} on "
                              f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish, or "
                              f"delete {lock} if that process is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(me))
        break
    else:
        raise MmfuseError(f"could not lock {what}: {lock} keeps reappearing")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None  # unreadable or half-written by a process killed while writing it: stale


def _is_dead(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote a lock is gone (only known for this host's processes)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        pid = int(holder.get("pid", 0))
        if pid <= 0:
            return True
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, TypeError, OverflowError):
        return False
    return False


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
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
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
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, trash / final.name)
    os.replace(new, final)
    shutil.rmtree(trash, ignore_errors=True)
