"""``prepare-data``: turn any registered source into the workspace data set format.

Format (``FORMAT_VERSION``): ``manifest.json``, ``vocab.json``, one ``<split>.jsonl`` per split and
``images/<split>/<image id>.png``. A line of a split is ``{"id", "image", "captions", "tokens"}`` for
captioning, ``{"id", "image", "text", "tokens", "label"}`` and an optional ``"group"`` for
classification (image paths relative to the data set; the manifest lists the ``labels``). The
directory is built aside and swapped in whole, so an interrupted run leaves the previous data set
untouched.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.tokenize import tokenize, tokenize_many
from mmfuse.data.vocab import Vocab
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, atomic_write_json, check_name, staged_directory

FORMAT_VERSION = 1
TOKENIZER = "spacy.blank('en'), lower-cased"
Progress = Callable[[str, int, int], None]  # (split, samples done in it, samples it will have)


@dataclass
class PrepareResult:
    path: Path
    manifest: dict[str, Any]


def prepare_data(
    workspace: Workspace,
    source: str,
    options: dict[str, Any],
    name: str | None = None,
    min_count: int = 1,
    on_progress: Progress | None = None,
) -> PrepareResult:
    """Build data set ``name`` (default: the source name) from ``source`` with ``options``.

    Returns:
        where the data set is and its manifest (counts per split, vocabulary size, options).
    """
    name = check_name(name or source, "data set")
    if min_count < 1:
        raise MmfuseError(f"--min-count must be >= 1, got {min_count}")
    src = SOURCES.create(source, **options)
    final = workspace.dataset_dir(name)
    with staged_directory(final) as staging:
        counts, splits = _write_samples(staging, src, on_progress)
        _check_not_empty(splits, source)
        vocab = Vocab.build_from_counts(counts, min_count)
        atomic_write_json(staging / "vocab.json", vocab.to_json())
        manifest = _manifest(name, source, src, splits, vocab)
        atomic_write_json(staging / "manifest.json", manifest)
    return PrepareResult(final, manifest)


def _write_samples(root: Path, src, on_progress: Progress | None) -> tuple[Counter, dict[str, dict[str, int]]]:
    """Write images and ``<split>.jsonl``; return train token counts and per-split counts."""
    counts: Counter = Counter()
    splits = {s: {"images": 0, "samples": 0, "captions": 0} for s in SPLITS}
    labels: dict[str, Counter] = {s: Counter() for s in SPLITS}
    handles = {s: (root / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    written: set[str] = set()
    try:
        for sample in src.samples():
            before = len(written)
            record = _write_one(root, sample, src.task, written)
            handles[sample.split].write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            split = splits[sample.split]
            split["samples"] += 1
            split["images"] += len(written) - before
            if src.task == "caption":
                split["captions"] += len(record["captions"])
                tokens = [tok for toks in record["tokens"] for tok in toks]
            else:
                labels[sample.split][record["label"]] += 1
                tokens = record["tokens"]
            if sample.split == "train":
                counts.update(tokens)
            if on_progress:
                on_progress(sample.split, split["samples"], src.count(sample.split))
    finally:
        for handle in handles.values():
            handle.close()
    if src.task == "classify":
        for s in SPLITS:
            splits[s]["labels"] = dict(sorted(labels[s].items()))
    return counts, splits


def _write_one(root: Path, sample: RawSample, task: str, written: set[str]) -> dict[str, Any]:
    check_name(sample.id, "sample id")
    if sample.split not in SPLITS:
        raise MmfuseError(f"sample {sample.id}: unknown split {sample.split!r}")
    rel = (Path("images") / sample.split / f"{check_name(sample.image_id or sample.id, 'image id')}.png").as_posix()
    if rel not in written:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sample.image.save(root / rel, format="PNG")
        written.add(rel)
    if task == "classify":
        return _classify_record(sample, rel)
    captions = [c.strip() for c in sample.captions if c and c.strip()]
    if not captions:
        raise MmfuseError(f"sample {sample.id} has no non-empty caption")
    tokens = list(tokenize_many(captions))
    return {"id": sample.id, "image": rel, "captions": captions, "tokens": tokens}


def _classify_record(sample: RawSample, rel: str) -> dict[str, Any]:
    text, label = sample.text.strip(), sample.label.strip()
    if not label:
        raise MmfuseError(f"sample {sample.id} has no label")
    record = {"id": sample.id, "image": rel, "text": text, "tokens": tokenize(text) if text else [], "label": label}
    return {**record, "group": sample.group} if sample.group else record


def _check_not_empty(splits: dict[str, dict[str, int]], source: str) -> None:
    empty = [s for s, c in splits.items() if c["samples"] == 0]
    if empty:
        raise MmfuseError(f"source {source!r} gave an empty data set: no images in split(s) {', '.join(empty)}")


def _manifest(name: str, source: str, src, splits, vocab: Vocab) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": source,
        "task": src.task,
        "options": src.options(),
        "image_size": src.options().get("image_size"),  # None: images keep their own sizes
        "splits": splits,
        **({"labels": _labels(splits)} if src.task == "classify" else {}),
        "tokenizer": TOKENIZER,
        "vocab_size": len(vocab),
        "min_count": vocab.min_count,
    }


def _labels(splits: dict[str, dict[str, Any]]) -> list[str]:
    """The class names, sorted; every val/test label must occur in training."""
    train = set(splits["train"]["labels"])
    for split in ("val", "test"):
        unseen = sorted(set(splits[split]["labels"]) - train)
        if unseen:
            raise MmfuseError(f"label(s) {', '.join(unseen)} of split {split!r} never occur in the training split")
    return sorted(train)
