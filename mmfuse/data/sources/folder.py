"""Your own images with a caption file: CSV (a header row naming the columns) or JSON Lines.

Captioning: CSV columns ``image,caption`` (one row per caption; an image may have several rows) or
JSONL ``{"image": ..., "captions": [...]}`` (or ``"caption": "..."``). Classification: CSV columns
``image,text,label`` or JSONL ``{"image", "text", "label"}``, each with an optional ``group``. The
task is classification when the file has labels. An optional ``split`` column/key (train, val,
test) places each image; without it images are divided by ``--val-ratio``/``--test-ratio`` with
``--seed``. Image paths are relative to ``--images`` (or absolute).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.sources.files import ListedSource, SplitRatios, existing_dir, read_lines, safe_id, source_options
from mmfuse.errors import MmfuseError


@dataclass(kw_only=True)
class FolderOptions(SplitRatios):
    """The source's options; ``val_ratio``, ``test_ratio`` and ``seed`` come from :class:`SplitRatios`."""

    images: str
    captions: str


@dataclass
class _Row:
    """One row of the caption file, where it came from, and what it says."""

    where: str  # file:line
    image: str
    captions: list[str]
    text: str = ""
    label: str = ""
    group: str = ""
    split: str = ""


@SOURCES.register("folder")
class FolderSource(ListedSource):
    """A folder of images with a CSV or JSONL caption (or label) file."""

    def __init__(self, **options: Any):
        self.opts = source_options(FolderOptions, options, "folder")
        self.root = existing_dir(self.opts.images, "--images")
        rows = list(_read_rows(Path(self.opts.captions)))
        if not rows:
            raise MmfuseError(f"{self.opts.captions}: no rows")
        self.task = "classify" if any(r.label for r in rows) else "caption"
        splits = _splits(rows, self.opts)
        self.samples_ = _classify_samples(rows, splits, self.root) if self.task == "classify" \
            else _caption_samples(rows, splits, self.root)


def _read_rows(path: Path) -> Iterator[_Row]:
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        yield from _jsonl_rows(path)
    else:
        raise MmfuseError(f"--captions {path}: expected a .csv or .jsonl file")


def _csv_rows(path: Path) -> Iterator[_Row]:
    lines = read_lines(path, "caption file")
    reader = csv.DictReader(line for _, line in lines)
    try:
        header = reader.fieldnames or []
        if "image" not in header or not ({"caption", "label"} & set(header)):
            raise MmfuseError(f"{path}:1: the header must name the columns 'image' and 'caption' (or 'image', "
                              f"'text' and 'label'); got {', '.join(header) or 'nothing'}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise MmfuseError(f"{where}: expected {len(header)} columns")
            yield _row(where, row)
    except csv.Error as exc:
        raise MmfuseError(f"{path}:{reader.line_num}: invalid CSV ({exc})") from None


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    for number, line in read_lines(path, "caption file"):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MmfuseError(f"{where}: invalid JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise MmfuseError(f"{where}: expected a JSON object")
        yield _row(where, item)


def _row(where: str, item: dict[str, Any]) -> _Row:
    if not item.get("image"):
        raise MmfuseError(f"{where}: no 'image'")
    captions = item.get("captions", [item["caption"]] if "caption" in item else [])
    if not isinstance(captions, list):
        raise MmfuseError(f"{where}: 'captions' must be a list of strings")
    split = str(item.get("split") or "").strip().lower()
    if split and split not in SPLITS:
        raise MmfuseError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    label = str(item.get("label") or "").strip()
    if "label" in item and not label:
        raise MmfuseError(f"{where}: empty 'label'")
    return _Row(where, str(item["image"]), [str(c) for c in captions], str(item.get("text") or ""), label,
                str(item.get("group") or ""), split)


def _splits(rows: list[_Row], ratios: SplitRatios) -> dict[str, str]:
    """Image -> split: the rows' own (one per image, consistently), else by ratio."""
    given: dict[str, str] = {}
    for row in rows:
        if row.split and given.setdefault(row.image, row.split) != row.split:
            raise MmfuseError(f"{row.where}: image {row.image} is in split {row.split!r} here and "
                              f"{given[row.image]!r} in an earlier row")
    images = sorted({r.image for r in rows})
    if given and len(given) < len(images):
        missing = next(i for i in images if i not in given)
        raise MmfuseError(f"image {missing} has no split while other rows name theirs")
    return given or ratios.assign(images)


def _caption_samples(rows: list[_Row], splits: dict[str, str], root: Path) -> list[RawSample]:
    captions: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        captions[row.image].extend(row.captions)
    seen: set[str] = set()
    return [RawSample(split=splits[image], id=_unique_id(_key(image), seen), image=root / image, captions=caps)
            for image, caps in captions.items()]


def _classify_samples(rows: list[_Row], splits: dict[str, str], root: Path) -> list[RawSample]:
    for row in rows:
        if not row.label:
            raise MmfuseError(f"{row.where}: no 'label' (other rows have one: a classification file)")
    seen: set[str] = set()
    return [RawSample(split=splits[r.image], id=_unique_id(f"{_key(r.image)}-{n}", seen), image=root / r.image,
                      text=r.text, label=r.label, group=r.group) for n, r in enumerate(rows)]


def _key(image: str) -> str:
    """An image's path without its extension (the base of its sample ids)."""
    return Path(image).with_suffix("").as_posix()


def _unique_id(text: str, seen: set[str]) -> str:
    base = safe_id(text)
    name, n = base, 1
    while name in seen:
        n += 1
        name = f"{base}-{n}"
    seen.add(name)
    return name
