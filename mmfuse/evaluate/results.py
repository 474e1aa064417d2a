"""Reading results and references from files anyone may hand us, with clear errors.

Captions: predictions are COCO results JSON (``[{"image_id": .., "caption": ..}, ...]``) or JSON Lines
of the same objects; references a COCO captions annotation file (``{"annotations": [{"image_id",
"caption"}]}``) or the name of a workspace data set (its ``<split>.jsonl``).

Answers: predictions are VQA results (``[{"question_id": .., "answer": ..}, ...]``, or JSON Lines);
references a VQA v2 annotation file (``{"annotations": [{"question_id", "answers": [{"answer"}, ...],
"question_type", "answer_type"}]}``; ``answers`` may also be a plain list of strings) or an answer
data set of the workspace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Hashable

import orjson

from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, open_regular


class ResultKind(Enum):
    """What a results file holds, told by the keys of its first entry."""

    CAPTION = ("image_id", "caption")
    ANSWER = ("question_id", "answer")

    @property
    def id_key(self) -> str:
        return self.value[0]

    @property
    def text_key(self) -> str:
        return self.value[1]

    @property
    def noun(self) -> str:
        return "image id" if self is ResultKind.CAPTION else "question id"


@dataclass(frozen=True)
class Predictions:
    kind: ResultKind
    by_id: dict[Hashable, str]  # image or question id -> caption or answer, in file order


@dataclass(frozen=True)
class HumanAnswers:
    """The references of one question."""

    answers: tuple[str, ...]
    question_type: str = ""
    answer_type: str = ""
    question: str = ""


def read_predictions(path: Path) -> Predictions:
    """Captions or answers by id, in file order; bad JSON, missing keys and duplicate ids are errors."""
    entries, where = _read_entries(path)
    if not entries:
        raise MmfuseError(f"{path}: no predictions")
    first = entries[0]
    kind = ResultKind.ANSWER if isinstance(first, dict) and "question_id" in first else ResultKind.CAPTION
    ids, texts = _pairs(entries, path, where, kind)
    preds = dict(zip(ids, texts))
    if len(preds) < len(ids):
        seen: set[Hashable] = set()
        for n, key in enumerate(ids):
            if key in seen:
                raise MmfuseError(f"{path}{where(n)}: {kind.noun} {key!r} has a second prediction")
            seen.add(key)
    return Predictions(kind, preds)


def read_references(source: str, workspace: Workspace, split: str) -> dict[Hashable, list[str]]:
    """image id -> reference captions, from a COCO captions file or a workspace data set."""
    path = Path(source)
    if path.is_file():
        return _coco_references(path)
    if _is_name(source) and workspace.dataset_dir(source).is_dir():
        from mmfuse.data.records import load_split  # (a data set's records: 3 ms to import, files need none)

        return {r.id: list(r.captions) for r in load_split(workspace.existing_dataset(source), split)}
    raise MmfuseError(f"references {source!r} is neither a file nor a data set in workspace {workspace.root}")


def read_answer_references(source: str, workspace: Workspace, split: str) -> dict[Hashable, HumanAnswers]:
    """question id -> human answers and types, from a VQA v2 annotation file or an answer data set."""
    path = Path(source)
    if path.is_file():
        return _vqa_references(path)
    if _is_name(source) and workspace.dataset_dir(source).is_dir():
        from mmfuse.data.records import load_answer_split

        return {question_id(r.id): HumanAnswers(r.answers, r.question_type, r.answer_type, r.question)
                for r in load_answer_split(workspace.existing_dataset(source), split)}
    raise MmfuseError(f"references {source!r} is neither a file nor a data set in workspace {workspace.root}")


def question_id(sample_id: str) -> int | str:
    """A data set sample's id as a VQA results file names its question: a number where it is one
    (VQA v2's question ids), so that results files work with the official tools."""
    return int(sample_id) if sample_id.isascii() and sample_id.isdigit() else sample_id  # not int('²')


def _vqa_references(path: Path) -> dict[Hashable, HumanAnswers]:
    data = _load_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise MmfuseError(f"{path}: not a VQA annotation file (no 'annotations' list)")
    refs: dict[Hashable, HumanAnswers] = {}
    for n, entry in enumerate(annotations):
        question_id, answers = _vqa_entry(entry, path, f": annotations[{n}]")
        if question_id in refs:
            raise MmfuseError(f"{path}: annotations[{n}]: question id {question_id!r} is annotated twice")
        refs[question_id] = HumanAnswers(answers, _group(entry, "question_type", path, n),
                                         _group(entry, "answer_type", path, n))
    if not refs:
        raise MmfuseError(f"{path}: the 'annotations' list is empty")
    return refs


def _vqa_entry(entry: Any, path: Path, where: str) -> tuple[Hashable, tuple[str, ...]]:
    if not isinstance(entry, dict) or "question_id" not in entry or "answers" not in entry:
        hint = " (this looks like a captions file: its results go with image ids)" \
            if isinstance(entry, dict) and "caption" in entry else ""
        raise MmfuseError(f"{path}{where}: expected an object with 'question_id' and 'answers'{hint}")
    question_id, answers = entry["question_id"], entry["answers"]
    if not isinstance(question_id, (int, str)) or isinstance(question_id, bool):
        raise MmfuseError(f"{path}{where}: 'question_id' must be a number or a string")
    if isinstance(answers, list):
        texts = [a.get("answer") if isinstance(a, dict) else a for a in answers]
        if texts and all(isinstance(t, str) for t in texts):
            return question_id, tuple(texts)
    raise MmfuseError(f"{path}{where}: 'answers' must be a non-empty list of strings or of {{\"answer\": ...}} objects")


def _group(entry: dict, key: str, path: Path, n: int) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str):
        raise MmfuseError(f"{path}: annotations[{n}]: '{key}' must be a string")
    return value


def _is_name(source: str) -> bool:
    return "/" not in source and source not in ("", ".", "..")


def _coco_references(path: Path) -> dict[Hashable, list[str]]:
    data = _load_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise MmfuseError(f"{path}: not a COCO captions file (no 'annotations' list)")
    if annotations and isinstance(annotations[0], dict) and "answers" in annotations[0]:
        raise MmfuseError(f"{path}: holds answers to questions (VQA); score VQA results "
                          f"([{{\"question_id\", \"answer\"}}]) against it")
    refs: dict[Hashable, list[str]] = {}
    for image_id, caption in zip(*_pairs(annotations, path, lambda n: f": annotations[{n}]", ResultKind.CAPTION)):
        refs.setdefault(image_id, []).append(caption)
    if not refs:
        raise MmfuseError(f"{path}: the 'annotations' list is empty")
    return refs


def _read_entries(path: Path) -> tuple[list[Any], Callable[[int], str]]:
    """The parsed objects of a JSON list or JSON Lines file, and where entry n is, for messages (made
    only for a message: 8,092 of them took 1.5 ms)."""
    data = _read_bytes(path)
    if data.lstrip().startswith(b"["):
        return _parse(data, path), lambda n: f": entry {n}"
    entries, linenos = [], []
    for lineno, line in enumerate(data.splitlines(), 1):  # at \n and \r only, as JSON Lines are
        if line.strip():
            entries.append(_parse(line, path, f":{lineno}", data))
            linenos.append(lineno)
    return entries, lambda n: f":{linenos[n]}"


def _pairs(entries: list[Any], path: Path, where: Callable[[int], str],
           kind: ResultKind) -> tuple[list[Hashable], list[str]]:
    """The id and the text of every entry (image id and caption, or question id and answer), as two
    lists; the first malformed entry is an error naming it.

    Checked in bulk (``itemgetter`` through ``map`` and type sets, in C), the per-entry checks only to
    name a bad entry: 40,000 references take about 5 ms instead of 100 ms."""
    ids_of, texts_of = itemgetter(kind.id_key), itemgetter(kind.text_key)
    try:
        ids, texts = list(map(ids_of, entries)), list(map(texts_of, entries))
        ok = set(map(type, ids)) <= {int, str} and set(map(type, texts)) <= {str}
    except (TypeError, KeyError, IndexError):
        ok = False
    if ok:
        return ids, texts
    for n, entry in enumerate(entries):  # find and name the first bad entry
        _fields(entry, path, where(n), kind)
    raise AssertionError("unreachable: a bad entry was not found")  # pragma: no cover


def _fields(entry: Any, path: Path, where: str, kind: ResultKind) -> tuple[Hashable, str]:
    id_key, text_key = kind.value
    if not isinstance(entry, dict):
        raise MmfuseError(f"{path}{where}: expected an object with '{id_key}' and '{text_key}'")
    missing = [k for k in kind.value if k not in entry]
    if missing:
        raise MmfuseError(f"{path}{where}: missing key(s) {', '.join(missing)}")
    key, text = entry[id_key], entry[text_key]
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise MmfuseError(f"{path}{where}: '{id_key}' must be a number or a string")
    if not isinstance(text, str):
        raise MmfuseError(f"{path}{where}: '{text_key}' must be a string")
    return key, text


def _read_bytes(path: Path) -> bytes:
    with open_regular(path, "results") as handle:
        return handle.read()


def _load_json(path: Path) -> Any:
    return _parse(_read_bytes(path), path)


def _parse(data: bytes, path: Path, where: str = "", whole: bytes | None = None) -> Any:
    """JSON through orjson, from the file's bytes (``whole``: the file, where ``data`` is one line of
    it): 20 ms against 44 ms for the standard library on an 8,092-image captions file (4.4 MB), and
    orjson checks the UTF-8 itself (decoding first took 2-2.5 ms more). Stricter: ``NaN`` and numbers
    beyond 64 bits are invalid JSON to it."""
    try:
        return orjson.loads(data)
    except json.JSONDecodeError as exc:  # orjson's error is one
        try:
            (data if whole is None else whole).decode("utf-8")
        except UnicodeDecodeError as bad:
            raise MmfuseError(f"{path}: not UTF-8 text ({bad.reason} at byte {bad.start})") from None
        line = f":{exc.lineno}" if not where else where
        raise MmfuseError(f"{path}{line}: invalid JSON ({exc.msg})") from None
