"""Your own images with a caption file: CSV (a header row naming the columns) or JSON Lines.

Captioning: CSV columns ``image,caption`` (one row per caption; an image may have several rows) or
JSONL ``{"image": ..., "captions": [...]}`` (or ``"caption": "..."``). Classification: CSV columns
``image,text,label`` or JSONL ``{"image", "text", "label"}``, each with an optional ``group``.
Answering: CSV columns ``image,question,answer`` (or ``answers``, a JSON list of the humans' answers)
or JSONL ``{"image", "question", "answer"}`` (or ``"answers": [...]``), with optional
``question_type`` and ``answer_type``. The task is classification when the file has labels,
answering when it has questions. An optional ``split`` column/key (train, val,
test) places each image; without it images are divided by ``--val-ratio``/``--test-ratio`` with
``--seed``. Image paths are relative to ``--images`` (or absolute).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.sources.files import (
    SplitRatios,
    absolute,
    existing_dir,
    read_lines,
    safe_id,
    source_options,
    text_value,
)
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
    question: str = ""
    answers: list[str] = dataclasses.field(default_factory=list)
    question_type: str = ""
    answer_type: str = ""


@dataclass(slots=True)
class _Image:
    """What is kept in memory per image while the file is read: its place and split."""

    index: int  # order of first appearance in the file
    split: str = ""  # the split its rows name ("" when they name none)
    rows: int = 0  # rows naming it (its samples, for classification)
    texts: int = 0  # of its captions (or labelled rows), those that are not empty


@SOURCES.register("folder")
class FolderSource:
    """A folder of images with a CSV or JSONL caption (or label) file.

    The file is read once when the source is made: every row is checked (errors name file:line),
    each image's split is settled, and the texts go to a private temporary SQLite database on disk
    (in $SQLITE_TMPDIR, $TMPDIR or /var/tmp; unlinked as soon as it is opened, so even kill -9
    leaves nothing behind). :meth:`samples` streams them back grouped by image, so memory grows with
    the number of images, not with the number of captions.
    """

    def __init__(self, **options: Any):
        self.opts = source_options(FolderOptions, options, "folder")
        self.root = existing_dir(self.opts.images, "--images")
        self.rows = _RowStore(Path(self.opts.captions))
        self.task = self.rows.task
        self.settle_splits(set())

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.opts)

    def image_files(self) -> Iterator[Path]:
        return (self.root / name for name in self.rows.images)

    def settle_splits(self, unusable: set[Path]) -> None:
        """Splits by ratio among the usable images (a readable file and a non-empty text); the
        others keep their own split, or train, and are skipped when prepared."""
        usable = {name: info for name, info in self.rows.images.items()
                  if info.texts and absolute(self.root / name) not in unusable}
        self.splits = {name: info.split or "train" for name, info in self.rows.images.items()}
        self.splits.update(_splits(usable, self.opts) if usable else {})
        self.counts = Counter[str]()
        for image, info in self.rows.images.items():
            self.counts[self.splits[image]] += info.rows if self.task != "caption" else 1

    def count(self, split: str) -> int:
        return self.counts[split]

    def samples(self) -> Iterator[RawSample]:
        names = list(self.rows.images)  # index -> image
        seen: set[str] = set()
        if self.task == "answer":
            for image, number, question, answers, question_type, answer_type in self.rows.questions_in_file_order():
                name = names[image]
                yield RawSample(split=self.splits[name], id=_unique_id(f"{_key(name)}-{number}", seen),
                                image=self.root / name, question=question, answers=json.loads(answers),
                                question_type=question_type, answer_type=answer_type)
            return
        if self.task == "classify":
            for image, number, text, label, group in self.rows.in_file_order():
                name = names[image]
                yield RawSample(split=self.splits[name], id=_unique_id(f"{_key(name)}-{number}", seen),
                                image=self.root / name, text=text, label=label, group=group)
            return
        grouped = self.rows.captions_by_image()
        for index, name in enumerate(names):
            yield RawSample(split=self.splits[name], id=_unique_id(_key(name), seen), image=self.root / name,
                            captions=grouped.take(index))


class _RowStore:
    """The rows of a caption file: per image its split and row count in memory, the texts in a
    private temporary SQLite database (one database row per caption, or per labelled row)."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect("")  # "": a private on-disk database, deleted when closed
        self.db.execute("CREATE TABLE texts (image INTEGER, row INTEGER, text TEXT, label TEXT, grp TEXT, "
                        "answers TEXT, atype TEXT)")
        self.images: dict[str, _Image] = {}  # image path as written in the file -> what is kept of it
        self.kinds: dict[str, str] = {}  # task -> where its first row is
        with _temporary_space(), self.db:
            self.db.executemany("INSERT INTO texts VALUES (?, ?, ?, ?, ?, ?, ?)", self._texts(path))
        if not self.images:
            raise MmfuseError(f"{path}: no rows")
        if len(self.kinds) > 1:
            (one, first), (other, second) = sorted(self.kinds.items(), key=lambda kv: kv[1])[:2]
            raise MmfuseError(f"{second}: a row for task {other!r} in a file whose rows are for task {one!r} "
                              f"(from {first}); one file holds one kind of row")
        self.task = next(iter(self.kinds))

    def _texts(self, path: Path) -> Iterator[tuple[int, int, str, str, str]]:
        """(image index, row number, text, label, group) per caption or labelled row, checking each row."""
        for number, row in enumerate(_read_rows(path)):
            image = self.images.get(row.image)
            if image is None:
                image = self.images[row.image] = _Image(len(self.images))
            if row.split and image.split and row.split != image.split:
                raise MmfuseError(f"{row.where}: image {row.image} is in split {row.split!r} here and "
                                  f"{image.split!r} in an earlier row")
            image.split = image.split or row.split
            image.rows += 1
            task = "answer" if row.question else "classify" if row.label else "caption"
            self.kinds.setdefault(task, row.where)
            if row.question:
                image.texts += any(a.strip() for a in row.answers)
                yield image.index, number, row.question, "", row.question_type, json.dumps(row.answers), row.answer_type
            elif row.label:
                image.texts += 1
                yield image.index, number, row.text, row.label, row.group, "", ""
            else:
                for caption in row.captions:
                    image.texts += bool(caption.strip())
                    yield image.index, number, caption, "", "", "", ""

    def in_file_order(self) -> Iterator[tuple[int, int, str, str, str]]:
        with _temporary_space():
            yield from self.db.execute("SELECT image, row, text, label, grp FROM texts ORDER BY rowid")

    def questions_in_file_order(self) -> Iterator[tuple[int, int, str, str, str, str]]:
        """(image, row, question, answers as JSON, question type, answer type) per answering row."""
        with _temporary_space():
            yield from self.db.execute("SELECT image, row, text, answers, grp, atype FROM texts ORDER BY rowid")

    def captions_by_image(self) -> "_Groups":
        with _temporary_space():
            self.db.execute("CREATE INDEX IF NOT EXISTS by_image ON texts (image)")
            return _Groups(self.db.execute("SELECT image, text FROM texts ORDER BY image, rowid"))


@contextmanager
def _temporary_space() -> Iterator[None]:
    """SQLite's errors (a full temporary directory, mostly) as one clear error."""
    try:
        yield
    except sqlite3.Error as exc:
        raise MmfuseError(f"could not keep the caption file's texts in a temporary file ({exc}); point "
                          f"$SQLITE_TMPDIR or $TMPDIR at a directory with more free space") from None


class _Groups:
    """Walks (image index, caption) rows sorted by image, handing out one image's captions at a time."""

    def __init__(self, rows: Iterator[tuple[int, str]]):
        self.rows = rows
        self.head = next(self.rows, None)

    def take(self, index: int) -> list[str]:
        """The captions of image ``index`` (images are asked for in increasing order)."""
        captions = []
        with _temporary_space():
            while self.head is not None and self.head[0] == index:
                captions.append(self.head[1])
                self.head = next(self.rows, None)
        return captions


def _read_rows(path: Path) -> Iterator[_Row]:
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        yield from _jsonl_rows(path)
    else:
        raise MmfuseError(f"--captions {path}: expected a .csv or .jsonl file")


def _csv_rows(path: Path) -> Iterator[_Row]:
    csv.field_size_limit(2**31 - 1)  # long fields reach text_value's limit, the same as in JSON Lines
    lines = read_lines(path, "caption file")
    reader = csv.DictReader(line for _, line in lines)
    try:
        header = reader.fieldnames or []
        if "image" not in header or not ({"caption", "label", "question"} & set(header)):
            raise MmfuseError(f"{path}:1: the header must name the columns 'image' and 'caption' (or 'image', "
                              f"'text' and 'label', or 'image', 'question' and 'answer'); got "
                              f"{', '.join(header) or 'nothing'}")
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
    """One row of either format, every value checked the same way (:func:`text_value`)."""
    if item.get("image") in (None, ""):
        raise MmfuseError(f"{where}: no 'image'")
    image = text_value(item["image"], where, "image")
    captions = item.get("captions", [item["caption"]] if "caption" in item else [])
    if not isinstance(captions, list):
        raise MmfuseError(f"{where}: 'captions' must be a list of strings")
    captions = [text_value(c, where, "captions" if "captions" in item else "caption") for c in captions]
    split = text_value(item.get("split", ""), where, "split").strip().lower()
    if split and split not in SPLITS:
        raise MmfuseError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    label = text_value(item.get("label", ""), where, "label").strip()
    if "label" in item and not label:
        raise MmfuseError(f"{where}: empty 'label'")
    question = text_value(item.get("question", ""), where, "question").strip()
    if "question" in item and not question:
        raise MmfuseError(f"{where}: empty 'question'")
    answers = _answers(item, where) if question else []
    return _Row(where, image, captions, text_value(item.get("text", ""), where, "text"), label,
                text_value(item.get("group", ""), where, "group"), split, question, answers,
                text_value(item.get("question_type", ""), where, "question_type"),
                text_value(item.get("answer_type", ""), where, "answer_type"))


def _answers(item: dict[str, Any], where: str) -> list[str]:
    """A question's human answers: ``answer`` (one), or ``answers`` (a list; in CSV a JSON list)."""
    if "answers" not in item:
        if "answer" not in item:
            raise MmfuseError(f"{where}: a question needs 'answer' (or 'answers')")
        return [text_value(item["answer"], where, "answer")]
    answers = item["answers"]
    if isinstance(answers, str):  # a CSV cell
        try:
            answers = json.loads(answers)
        except json.JSONDecodeError:
            raise MmfuseError(f"{where}: 'answers' must be a JSON list of strings, e.g. [\"red\", \"dark red\"]") from None
    if not isinstance(answers, list) or not answers:
        raise MmfuseError(f"{where}: 'answers' must be a non-empty list of strings")
    return [text_value(a, where, "answers") for a in answers]


def _splits(images: dict[str, _Image], ratios: SplitRatios) -> dict[str, str]:
    """Image -> split: the rows' own (every image must have one when any has), else by ratio."""
    given = {image: info.split for image, info in images.items() if info.split}
    if given and len(given) < len(images):
        missing = min(i for i in images if i not in given)
        raise MmfuseError(f"image {missing} has no split while other rows name theirs")
    return given or ratios.assign(list(images))


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
