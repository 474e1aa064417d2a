"""What ``mmfuse caption`` and ``mmfuse ask`` read: image files, directories (recursively), glob
patterns and ``-`` (paths from stdin), or (``ask --pairs``) JSON Lines of image and question,
expanded lazily in input order so that a long list streams."""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from mmfuse.errors import MmfuseError
from mmfuse.workspace import os_problem, printable

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
_GLOB_CHARS = frozenset("*?[")


@dataclass
class Captioned:
    """The outcome for one input: its captions (words and score, best first), or why it was skipped."""

    path: Path
    captions: list[tuple[list[str], float]] = field(default_factory=list)  # answers, for a question
    problem: str | None = None
    attention_map: Path | None = None
    question: str | None = None  # ``ask``: what was asked of the image


@dataclass(frozen=True)
class InputItem:
    """One image to caption (or, with ``question``, to answer about), or an input that named none
    (``problem``: a message naming it)."""

    path: Path
    problem: str | None = None
    question: str | None = None


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


def asked(items: Iterable[InputItem], question: str) -> Iterator[InputItem]:
    """Each input with ``question``."""
    for item in items:
        yield InputItem(item.path, item.problem, question)


def question_pairs(lines: Iterable[str], where: str) -> Iterator[InputItem]:
    """One input per non-empty JSON Lines line ``{"image": PATH, "question": TEXT}`` (a missing
    image is an input with a problem; a malformed line is an error naming it)."""
    import json

    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            path, question = entry["image"], entry["question"]
            if not isinstance(path, str) or not isinstance(question, str) or not path:
                raise TypeError("'image' and 'question' must be non-empty strings")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise MmfuseError(f"{where}:{n}: expected a JSON object with \"image\" and \"question\" "
                              f"({type(exc).__name__}: {exc})") from None
        yield InputItem(Path(path), _kind(Path(path))[1], question)


def read_image_list(inputs: Iterable[str], stdin: Iterable[str]) -> list[Path]:
    """Paths from the command line, where ``-`` stands for one path per line of ``stdin``."""
    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            paths.extend(Path(line.strip()) for line in stdin if line.strip())
        else:
            paths.append(Path(item))
    if not paths:
        raise MmfuseError("no images given (pass image paths, or - to read them from stdin)")
    return paths


def check_images(paths: list[Path]) -> None:
    """Fail before any output if an image is missing or not an image (see
    :func:`~mmfuse.data.images.verify_image`)."""
    from mmfuse.data.images import verify_image  # Pillow: not for --help

    for path in paths:
        verify_image(path)


def read_pairs(images: list[str], text: str | None, pairs: Iterable[str] | None, where: str,
               stdin: Iterable[str]) -> tuple[list[Path], list[str]]:
    """(image, text) pairs: every image with ``text`` (``-`` reads image paths from ``stdin``), or
    JSON Lines ``{"image", "text"}`` from ``pairs``."""
    import json

    if pairs is None:
        if text is None:
            raise MmfuseError("give --text with the images, or --pairs FILE (JSON Lines of {\"image\", \"text\"})")
        paths = read_image_list(images, stdin)
        return paths, [text] * len(paths)
    paths, texts = [], []
    for n, line in enumerate(pairs, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            paths.append(Path(item["image"]))
            texts.append(str(item["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MmfuseError(f"{where}:{n}: expected a JSON object with \"image\" and \"text\" ({type(exc).__name__}: {exc})") from None
    if not paths:
        raise MmfuseError(f"{where}: no (image, text) pairs")
    return paths, texts
