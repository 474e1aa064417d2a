"""``prepare-data``: turn any registered source into the workspace data set format.

Format (``FORMAT_VERSION``): ``manifest.json``, ``vocab.json``, one ``<split>.jsonl`` per split and
``images/<split>/<image id>.png``. A line of a split is ``{"id", "image", "captions", "tokens"}`` for
captioning, ``{"id", "image", "text", "tokens", "label"}`` and an optional ``"group"`` for
classification (image paths relative to the data set; the manifest lists the ``labels``), and
``{"id", "image", "question", "question_tokens", "answers", "answer_tokens"}`` with optional
``"history"`` (earlier ``[question, answer]`` turns), ``"history_tokens"``, ``"question_type"`` and
``"answer_type"`` for answering. The
directory is built aside and swapped in whole, so an interrupted run leaves the previous data set
untouched.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmfuse.data.images import load_rgb
from mmfuse.data.records import FORMAT_VERSION
from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.sources.files import absolute
from mmfuse.data.tokenize import tokenize, tokenize_many
from mmfuse.data.vocab import Vocab
from mmfuse.errors import Interrupted, MmfuseError
from mmfuse.workspace import (
    Workspace,
    atomic_write_json,
    check_name,
    exclusive,
    staged_directory,
    writing,
)

TOKENIZER = "spacy.blank('en'), lower-cased"
Progress = Callable[[str, int, int], None]  # ("checking images" or the split, done, total)


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
    max_length: int = 0,
) -> PrepareResult:
    """Build data set ``name`` (default: the source name) from ``source`` with ``options``.

    Image files are checked once; samples whose image is missing or unreadable, or that have no
    non-empty caption, are left out and listed in ``report.json``. ``max_length`` (> 0) cuts
    tokenized captions to that many tokens.

    Returns:
        where the data set is and its manifest (counts per split, vocabulary size and coverage,
        caption-length percentiles, skipped samples, options).
    """
    name = check_name(name or source, "data set")
    if min_count < 1 or max_length < 0:
        raise MmfuseError(f"--min-count must be >= 1 and --max-length >= 0, got {min_count} and {max_length}")
    src = SOURCES.create(source, **options)
    final = workspace.dataset_dir(name)
    try:
        return _prepare(src, source, name, final, min_count, on_progress, max_length)
    except KeyboardInterrupt as exc:
        state = "is as it was" if final.exists() else "was not created"
        raise Interrupted(f"prepare-data interrupted: data set {name!r} {state} (nothing half-written is left); "
                          f"run the same command again", exc) from None


def _prepare(src, source: str, name: str, final: Path, min_count: int, on_progress: Progress | None,
             max_length: int) -> PrepareResult:
    """Build the data set aside, under its lock, and swap it into place."""
    with exclusive(final, f"data set {name!r}"), staged_directory(final, clear_leftovers=True) as staging:
        written = _Written(max_length)
        _check_images(src, written, on_progress)
        splits = _write_samples(staging, src, on_progress, written)
        _check_not_empty(splits, source, written.skipped)
        vocab = Vocab.build_from_counts(written.counts["train"], min_count)
        atomic_write_json(staging / "vocab.json", vocab.to_json())
        manifest = _manifest(name, source, src, splits, vocab)
        manifest["stats"] = written.stats(vocab)
        atomic_write_json(staging / "report.json", {"skipped": written.skipped, "stats": manifest["stats"]})
        atomic_write_json(staging / "manifest.json", manifest)
    return PrepareResult(final, manifest)


@dataclass
class _Written:
    """What has been written so far: image files, skipped samples, token statistics."""

    max_length: int = 0
    images: set[str] = field(default_factory=set)  # data set paths of the images written or referenced
    checked: dict[Path, str | None] = field(default_factory=dict)  # image file -> problem (None: fine)
    skipped: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    lengths: Counter = field(default_factory=Counter)  # training caption length in tokens (before cutting) -> how many
    cut: int = 0  # captions cut to max_length

    def problem(self, path: Path) -> str | None:
        """Why the image file at ``path`` cannot be used (None: it can), checked once per file."""
        path = absolute(path)
        if path not in self.checked:
            try:
                load_rgb(path)
                self.checked[path] = None
            except MmfuseError as exc:
                self.checked[path] = str(exc)
        return self.checked[path]

    def stats(self, vocab: Vocab) -> dict[str, Any]:
        """Vocabulary coverage per split (tokens the vocabulary knows) and caption-length percentiles."""
        coverage = {s: round(sum(n for t, n in c.items() if t in vocab) / max(sum(c.values()), 1), 4)
                    for s, c in self.counts.items()}
        pick = lambda q: _quantile(self.lengths, q)  # noqa: E731
        return {"vocab_coverage": coverage, "caption_length": {"p50": pick(0.5), "p90": pick(0.9),
                                                               "p99": pick(0.99), "max": max(self.lengths, default=0)},
                "captions_cut": self.cut, "max_length": self.max_length, "skipped_samples": len(self.skipped)}


def _quantile(histogram: Counter, q: float) -> int:
    """The value at position ``int(q * n)`` of the ``n`` values a histogram (value -> count) counts,
    sorted (0 when it is empty)."""
    n = sum(histogram.values())
    position, below = min(n - 1, int(q * n)), 0
    for value in sorted(histogram):
        below += histogram[value]
        if below > position:
            return value
    return 0


def _check_images(src, written: "_Written", on_progress: Progress | None) -> None:
    """Open and decode every image file the source names, once, then let it settle the splits
    among the usable ones (so an unreadable image cannot leave a split empty)."""
    files = list(src.image_files())
    for done, path in enumerate(files, 1):
        written.problem(path)
        if on_progress:
            on_progress("checking images", done, len(files))
    src.settle_splits({path for path, problem in written.checked.items() if problem is not None})


def _write_samples(root: Path, src, on_progress: Progress | None, written: "_Written") -> dict[str, dict[str, int]]:
    """Write images and ``<split>.jsonl``; return per-split counts."""
    texts = {"caption": "captions", "answer": "answers"}.get(src.task)  # counted per split besides samples
    splits = {s: {"images": 0, "samples": 0, **({texts: 0} if texts else {})} for s in SPLITS}
    labels: dict[str, Counter] = {s: Counter() for s in SPLITS}
    handles = {s: (root / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    seen, total = 0, sum(src.count(s) for s in SPLITS)
    try:
        for sample in src.samples():
            seen += 1
            if on_progress:
                on_progress(sample.split, seen, total)
            before = len(written.images)
            record = _write_one(root, sample, src.task, written)
            if record is None:
                continue
            with writing(root / f"{sample.split}.jsonl"):
                handles[sample.split].write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            split = splits[sample.split]
            split["samples"] += 1
            split["images"] += len(written.images) - before
            if src.task == "caption":
                split["captions"] += len(record["captions"])
                tokens = [tok for toks in record["tokens"] for tok in toks]
            elif src.task == "answer":
                split["answers"] += len(record["answers"])
                tokens = _answer_tokens(record)
            else:
                labels[sample.split][record["label"]] += 1
                tokens = record["tokens"]
            written.counts[sample.split].update(tokens)
    finally:
        for split, handle in handles.items():
            with writing(root / f"{split}.jsonl"):
                handle.close()  # flushes: may be where the disk turns out full
    if src.task == "classify":
        for s in SPLITS:
            splits[s]["labels"] = dict(sorted(labels[s].items()))
    return splits


def _write_one(root: Path, sample: RawSample, task: str, written: _Written) -> dict[str, Any] | None:
    """The record of ``sample`` (its image written or checked), or None when it is skipped."""
    check_name(sample.id, "sample id")
    if sample.split not in SPLITS:
        raise MmfuseError(f"sample {sample.id}: unknown split {sample.split!r}")
    rel = _image(root, sample, written)
    if rel is None:
        return None
    if task == "classify":
        return _classify_record(sample, rel)
    if task == "answer":
        return _answer_record(sample, rel, written)
    captions = [c.strip() for c in sample.captions if c and c.strip()]
    if not captions:
        written.skipped.append({"id": sample.id, "image": rel, "problem": "no non-empty caption"})
        return None
    tokens = list(tokenize_many(captions))
    if sample.split == "train":
        written.lengths.update(len(t) for t in tokens)
    if written.max_length:
        written.cut += sum(len(t) > written.max_length for t in tokens)
        tokens = [t[:written.max_length] for t in tokens]
    return {"id": sample.id, "image": rel, "captions": captions, "tokens": tokens}


def _image(root: Path, sample: RawSample, written: _Written) -> str | None:
    """Where the data set finds the sample's image: a PNG written into it, or the checked file's
    absolute path (None, with the sample listed as skipped, when that file cannot be used)."""
    if isinstance(sample.image, Path):
        path = absolute(sample.image)
        problem = written.problem(path)
        if problem is not None:
            written.skipped.append({"id": sample.id, "image": str(path), "problem": problem})
            return None
        written.images.add(str(path))
        return str(path)
    rel = (Path("images") / sample.split / f"{check_name(sample.image_id or sample.id, 'image id')}.png").as_posix()
    if rel not in written.images:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with writing(root / rel):
            sample.image.save(root / rel, format="PNG")
        written.images.add(rel)
    return rel


def _classify_record(sample: RawSample, rel: str) -> dict[str, Any]:
    text, label = sample.text.strip(), sample.label.strip()
    if not label:
        raise MmfuseError(f"sample {sample.id} has no label")
    record = {"id": sample.id, "image": rel, "text": text, "tokens": tokenize(text) if text else [], "label": label}
    return {**record, "group": sample.group} if sample.group else record


def _answer_record(sample: RawSample, rel: str, written: _Written) -> dict[str, Any] | None:
    """An answering record: the question and history tokenized, each human answer kept and tokenized
    (empty answers dropped; an empty question, or one left with no answer, is skipped)."""
    question = sample.question.strip()
    answers = [a.strip() for a in sample.answers if a and a.strip()]
    if not question or not answers:
        written.skipped.append({"id": sample.id, "image": rel,
                                "problem": "no non-empty answer" if question else "an empty question"})
        return None
    record: dict[str, Any] = {"id": sample.id, "image": rel, "question": question, "question_tokens": tokenize(question),
                              "answers": answers, "answer_tokens": list(tokenize_many(answers))}
    if sample.history:
        record["history"] = [[q, a] for q, a in sample.history]
        record["history_tokens"] = [[tokenize(q), tokenize(a)] for q, a in sample.history]
    for key in ("question_type", "answer_type"):
        if getattr(sample, key):
            record[key] = getattr(sample, key)
    return record


def _answer_tokens(record: dict[str, Any]) -> list[str]:
    """Every token an answering record holds (for the vocabulary)."""
    tokens = record["question_tokens"] + [t for answer in record["answer_tokens"] for t in answer]
    return tokens + [t for turn in record.get("history_tokens", []) for part in turn for t in part]


def _check_not_empty(splits: dict[str, dict[str, int]], source: str, skipped: list[dict[str, str]]) -> None:
    empty = [s for s, c in splits.items() if c["samples"] == 0]
    if empty:
        why = f" ({len(skipped)} skipped, e.g. {skipped[0]['image']}: {skipped[0]['problem']})" if skipped else ""
        raise MmfuseError(f"source {source!r} gave an empty data set: no images in split(s) {', '.join(empty)}{why}")


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
