"""Reading a workspace data set's manifest and splits as plain records: no torch, no spaCy, no images.

What scoring a results file against a data set needs (``evaluate --predictions``), and what the torch
``Dataset`` classes in :mod:`mmfuse.data.dataset` are built on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError, first_line
from mmfuse.workspace import read_json

FORMAT_VERSION = 1  # of a prepared data set: manifest.json, vocab.json, one <split>.jsonl per split
TASKS = ("caption", "classify", "answer")  # what a data set's samples are for (manifest "task")


@dataclass(frozen=True)
class Record:
    """One image of a split with its references (raw and tokenized)."""

    id: str
    image: Path
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]


def load_manifest(root: Path) -> dict[str, Any]:
    """The data set's manifest, refusing formats newer than this mmfuse reads."""
    manifest = read_json(root / "manifest.json", "data set manifest")
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise MmfuseError(f"data set manifest has no format_version: {root / 'manifest.json'}")
    if version > FORMAT_VERSION:
        raise MmfuseError(
            f"data set {root.name!r} has format version {version}, newer than this mmfuse reads "
            f"({FORMAT_VERSION}); upgrade mmfuse or prepare the data set again"
        )
    _check_manifest(manifest, root / "manifest.json")
    return manifest


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """The fields commands read, with their types: a damaged or hand-edited manifest is one line
    naming the field, never a wrong value used quietly."""
    where = f"data set manifest {path}"
    if manifest.get("task", "caption") not in TASKS:
        raise MmfuseError(f"{where}: 'task' must be one of {', '.join(TASKS)}, got {manifest.get('task')!r}")
    size = manifest.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 8192):
        raise MmfuseError(f"{where}: 'image_size' must be null or a whole number from 1 to 8192, got {size!r}")
    if not isinstance(manifest.get("splits", {}), dict):
        raise MmfuseError(f"{where}: 'splits' must be an object")
    if manifest.get("task") == "classify":
        labels = manifest.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels) \
                or len(set(labels)) != len(labels):
            raise MmfuseError(f"{where}: 'labels' must be a list of distinct, non-empty class names")


@dataclass(frozen=True)
class LabelledRecord:
    """One (image, text, label) sample of a classification split."""

    id: str
    image: Path
    text: str
    tokens: tuple[str, ...]
    label: str
    group: str = ""  # optional subgroup (e.g. the question kind) that evaluation reports separately


@dataclass(frozen=True)
class AnswerRecord:
    """One question about an image with its human answers (task ``answer``); ``history`` holds the
    earlier (question, answer) turns of a conversation, oldest first."""

    id: str
    image: Path
    question: str
    answers: tuple[str, ...]
    question_tokens: tuple[str, ...]
    answer_tokens: tuple[tuple[str, ...], ...]
    history: tuple[tuple[str, str], ...] = ()
    history_tokens: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()
    question_type: str = ""  # a group the report scores apart (VQA v2: "what color", ...)
    answer_type: str = ""  # another (VQA v2: "yes/no", "number", "other")


def load_split(root: Path, split: str) -> list[Record]:
    """All records of a captioning ``split``; a missing or empty split is a clear error."""
    return _load(root, split, _parse)


def load_labelled_split(root: Path, split: str) -> list[LabelledRecord]:
    """All records of a classification ``split``; a missing or empty split is a clear error."""
    return _load(root, split, _parse_labelled)


def load_answer_split(root: Path, split: str) -> list[AnswerRecord]:
    """All records of a question-answering ``split``; a missing or empty split is a clear error."""
    return _load(root, split, _parse_answer)


def _load(root: Path, split: str, parse) -> list:
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise MmfuseError(f"data set {root.name!r} has no split {split!r} ({path} is missing)")
    with path.open(encoding="utf-8") as handle:
        records = [_parse_line(parse, root, line, path, n) for n, line in enumerate(handle, 1) if line.strip()]
    if not records:
        raise MmfuseError(f"split {split!r} of data set {root.name!r} is empty")
    return records


def _parse_line(parse, root: Path, line: str, path: Path, lineno: int):
    try:
        return parse(root, json.loads(line))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MmfuseError(f"{path}:{lineno}: malformed record ({type(exc).__name__}: {first_line(exc)})") from None


def _text(raw: dict[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _texts(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{key!r} must be a list of strings")
    return tuple(value)


def _parse(root: Path, raw: dict[str, Any]) -> Record:
    if not isinstance(raw.get("tokens"), list):
        raise TypeError("'tokens' must be a list of lists of strings")
    return Record(id=_text(raw, "id"), image=root / _text(raw, "image"), captions=_texts(raw.get("captions"), "captions"),
                  tokens=tuple(_texts(t, "tokens") for t in raw["tokens"]))


def _parse_labelled(root: Path, raw: dict[str, Any]) -> LabelledRecord:
    return LabelledRecord(id=_text(raw, "id"), image=root / _text(raw, "image"), text=_text(raw, "text"),
                          tokens=_texts(raw.get("tokens"), "tokens"), label=_text(raw, "label"),
                          group=_text(raw, "group", ""))


def _parse_answer(root: Path, raw: dict[str, Any]) -> AnswerRecord:
    answers = _texts(raw.get("answers"), "answers")
    if not answers:
        raise ValueError("'answers' is empty")
    history = raw.get("history", [])
    if not isinstance(history, list) or not all(isinstance(t, list) and len(t) == 2 for t in history):
        raise TypeError("'history' must be a list of [question, answer] pairs")
    tokens = raw.get("answer_tokens")
    if not isinstance(tokens, list):
        raise TypeError("'answer_tokens' must be a list of lists of strings")
    return AnswerRecord(id=_text(raw, "id"), image=root / _text(raw, "image"), question=_text(raw, "question"),
                        answers=answers, question_tokens=_texts(raw.get("question_tokens"), "question_tokens"),
                        answer_tokens=tuple(_texts(t, "answer_tokens") for t in tokens),
                        history=tuple(tuple(_texts(t, "history")) for t in history),
                        history_tokens=tuple((_texts(q, "history_tokens"), _texts(a, "history_tokens"))
                                             for q, a in raw.get("history_tokens", [])),
                        question_type=_text(raw, "question_type", ""), answer_type=_text(raw, "answer_type", ""))
