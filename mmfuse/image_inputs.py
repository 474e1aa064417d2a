"""What ``mmfuse caption`` reads: image files, directories (recursively), glob patterns and ``-``
(paths from stdin), expanded lazily in input order so that a long list streams."""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mmfuse.workspace import os_problem, printable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    """One image to caption, or an input that named none (``problem``: a message naming it)."""

    path: Path
    problem: str | None = None


def expand_inputs(inputs: Iterable[str], stdin: Iterable[str]) -> Iterator[InputItem]:
    """Each input in order: a file as itself; a directory as its image files (recursively, sorted,
    by extension, hidden entries skipped); a pattern with ``*?[`` as its matches (sorted; ``**``
    spans directories); ``-`` as one input per non-empty line of ``stdin``. A missing path or a
    pattern without matches yields an item with a ``problem``."""
    for item in inputs:
        if item == "-":
            for line in stdin:
                if line.strip():
                    yield from _expand(line.rstrip("\r\n"), literal=True)
        else:
            yield from _expand(item, literal=False)


def _expand(item: str, literal: bool) -> Iterator[InputItem]:
    path = Path(item)
    kind, problem = _kind(path)
    if kind == stat.S_IFDIR:
        found = False
        for image in _images_under(path):
            found = True
            yield InputItem(image)
        if not found:
            yield InputItem(path, f"no image files in directory {printable(item)}")
    elif kind is not None or literal or not _GLOB_CHARS & set(item):
        yield InputItem(path, problem)  # a file that is not a regular one is refused when it is read
    else:
        matches = sorted(glob.glob(item, recursive=True))
        if not matches:
            yield InputItem(path, f"no file matches {printable(item)}")
        for match in matches:
            yield from _expand(match, literal=True)


def _kind(path: Path) -> tuple[int | None, str | None]:
    """The file type of ``path`` (following links; None when it cannot be known) and, when it
    cannot be used, why: any path a user can type is one input, never an error that stops the rest."""
    try:
        return stat.S_IFMT(os.stat(path).st_mode), None
    except FileNotFoundError:
        return None, f"image not found: {printable(str(path))}"
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        return None, f"cannot open image {printable(str(path))}: {os_problem(exc)}"


def _images_under(root: Path) -> Iterator[Path]:
    """Image files below ``root`` in sorted, depth-first order, without hidden files or directories."""
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(current) / name
