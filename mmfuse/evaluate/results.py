"""Reading captioning results and references from files anyone may hand us, with clear errors.

Predictions: COCO results JSON (``[{"image_id": .., "caption": ..}, ...]``) or JSON Lines of the
same objects. References: a COCO captions annotation file (``{"annotations": [{"image_id", "caption"}]}``)
or the name of a workspace data set (its ``<split>.jsonl``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Hashable

from mmfuse.data.records import load_split
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, open_regular


def read_predictions(path: Path) -> dict[Hashable, str]:
    """image id -> caption, in file order; bad JSON, missing keys and duplicate ids are errors."""
    entries = _read_entries(path)
    pairs = _pairs([e for _, e in entries], path, lambda n: entries[n][0])
    preds = dict(pairs)
    if len(preds) < len(pairs):
        seen: set[Hashable] = set()
        for (where, _), (image_id, _) in zip(entries, pairs):
            if image_id in seen:
                raise MmfuseError(f"{path}{where}: image id {image_id!r} has a second prediction")
            seen.add(image_id)
    if not preds:
        raise MmfuseError(f"{path}: no predictions")
    return preds


def read_references(source: str, workspace: Workspace, split: str) -> dict[Hashable, list[str]]:
    """image id -> reference captions, from a COCO captions file or a workspace data set."""
    path = Path(source)
    if path.is_file():
        return _coco_references(path)
    if _is_name(source) and workspace.dataset_dir(source).is_dir():
        return {r.id: list(r.captions) for r in load_split(workspace.existing_dataset(source), split)}
    raise MmfuseError(f"references {source!r} is neither a file nor a data set in workspace {workspace.root}")


def _is_name(source: str) -> bool:
    return "/" not in source and source not in ("", ".", "..")


def _coco_references(path: Path) -> dict[Hashable, list[str]]:
    data = _load_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise MmfuseError(f"{path}: not a COCO captions file (no 'annotations' list)")
    refs: dict[Hashable, list[str]] = {}
    for image_id, caption in _pairs(annotations, path, lambda n: f": annotations[{n}]"):
        refs.setdefault(image_id, []).append(caption)
    if not refs:
        raise MmfuseError(f"{path}: the 'annotations' list is empty")
    return refs


def _read_entries(path: Path) -> list[tuple[str, Any]]:
    """(location for messages, parsed object) for a JSON list or JSON Lines file."""
    text = _read_text(path)
    if text.lstrip().startswith("["):
        data = _parse(text, path)
        return [(f": entry {n}", e) for n, e in enumerate(data)]
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            entries.append((f":{lineno}", _parse(line, path, f":{lineno}")))
    return entries


def _pairs(entries: list[Any], path: Path, where: Callable[[int], str]) -> list[tuple[Hashable, str]]:
    """(image id, caption) of every entry; the first malformed one is an error naming it.

    Checked in bulk (comprehensions and type sets), the per-entry checks only to name a bad entry:
    40,000 references take 15 ms instead of 100 ms."""
    try:
        pairs = [(e["image_id"], e["caption"]) for e in entries]
        ok = {type(i) for i, _ in pairs} <= {int, str} and {type(c) for _, c in pairs} <= {str}
    except (TypeError, KeyError, IndexError):
        ok = False
    if ok:
        return pairs
    for n, entry in enumerate(entries):  # find and name the first bad entry
        _fields(entry, path, where(n))
    raise AssertionError("unreachable: a bad entry was not found")  # pragma: no cover


def _fields(entry: Any, path: Path, where: str) -> tuple[Hashable, str]:
    if not isinstance(entry, dict):
        raise MmfuseError(f"{path}{where}: expected an object with 'image_id' and 'caption'")
    missing = [k for k in ("image_id", "caption") if k not in entry]
    if missing:
        raise MmfuseError(f"{path}{where}: missing key(s) {', '.join(missing)}")
    image_id, caption = entry["image_id"], entry["caption"]
    if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
        raise MmfuseError(f"{path}{where}: 'image_id' must be a number or a string")
    if not isinstance(caption, str):
        raise MmfuseError(f"{path}{where}: 'caption' must be a string")
    return image_id, caption


def _read_text(path: Path) -> str:
    try:
        with open_regular(path, "results") as handle:
            return handle.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MmfuseError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _load_json(path: Path) -> Any:
    return _parse(_read_text(path), path)


def _parse(text: str, path: Path, where: str = "") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        line = f":{exc.lineno}" if not where else where
        raise MmfuseError(f"{path}{line}: invalid JSON ({exc.msg})") from None
