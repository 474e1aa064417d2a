"""``evaluate``: score generated captions with the coco-caption metrics.

Two entry points: :func:`evaluate_run` captions a split of a run's data set with the run's model;
:func:`evaluate_files` scores anyone's results file (COCO results JSON or JSONL) against a COCO
captions annotation file or a workspace data set. Both tokenize raw text as coco-caption does and
report corpus and per-image BLEU-1..4, ROUGE-L, CIDEr-D and, where Java runs it, METEOR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmfuse.config import to_dict
from mmfuse.data.dataset import load_split
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.inference import caption_files
from mmfuse.metrics.captions import caption_scores, tokenize_texts
from mmfuse.metrics.meteor import MeteorUnavailable, meteor
from mmfuse.models.checkpoint import load_run, read_metadata
from mmfuse.results import read_predictions, read_references
from mmfuse.workspace import Workspace, atomic_write_json


def evaluate_run(
    workspace: Workspace,
    run: str,
    split: str = "test",
    beam_size: int | None = None,
    max_length: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    with_meteor: bool = True,
) -> dict[str, Any]:
    """Generate captions for ``split`` and score them.

    Writes ``eval-<split>.json`` (the report) and ``results-<split>.json`` (COCO results format, for
    other tools) into the run. Decoding settings default to the run's; the arguments override them.
    """
    run_dir = workspace.existing_run(run)
    loaded = load_run(run_dir, checkpoint, resolve_device(device))
    decode = loaded.config.decode.override(beam_size, max_length)
    records = load_split(workspace.existing_dataset(loaded.config.train.data), split)
    hyps = [" ".join(words) for words in caption_files(loaded.model, loaded.vocab, [r.image for r in records],
                                                        loaded.config.model.image_size, decode, batch_size)]
    report = score_report([r.id for r in records], hyps, [list(r.captions) for r in records], with_meteor)
    report.update({
        "run": run, "data": loaded.config.train.data, "split": split, "checkpoint": checkpoint,
        "epoch": int(read_metadata(loaded.weights).get("epoch", 0)), "decode": to_dict(decode),
    })
    for item, record in zip(report["images"], records):
        item["image"] = str(record.image)
    atomic_write_json(run_dir / f"results-{split}.json", [{"image_id": r.id, "caption": h} for r, h in zip(records, hyps)])
    atomic_write_json(run_dir / f"eval-{split}.json", report)
    return report


def evaluate_files(workspace: Workspace, predictions: Path, references: str, split: str = "test",
                   with_meteor: bool = True) -> dict[str, Any]:
    """Score a results file against references (a COCO captions file, or a workspace data set name).

    Only the images that have a prediction are scored (as coco-caption does); a prediction for an
    image that has no reference is an error.
    """
    preds = read_predictions(predictions)
    refs = read_references(references, workspace, split)
    missing = [i for i in preds if i not in refs]
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise MmfuseError(f"{predictions}: {len(missing)} image id(s) have no references in {references} (e.g. {shown})")
    ids = list(preds)
    report = score_report(ids, [preds[i] for i in ids], [refs[i] for i in ids], with_meteor)
    report.update({"predictions": str(predictions), "references": references})
    return report


def score_report(ids: list[Any], hypotheses: list[str], references: list[list[str]], with_meteor: bool) -> dict[str, Any]:
    """Corpus and per-image scores of raw-text captions, as a report dict."""
    hyp_tokens, ref_tokens = tokenize_texts(hypotheses, references)  # once, for every metric
    scores = caption_scores(hyp_tokens, ref_tokens)
    corpus, per_image = scores["corpus"], scores["per_image"]
    meteor_note = _add_meteor(hyp_tokens, ref_tokens, corpus, per_image) if with_meteor else "not requested"
    images = [{"id": i, "caption": h, "references": r, "scores": s}
              for i, h, r, s in zip(ids, hypotheses, references, per_image)]
    return {"num_images": len(ids), "metrics": corpus, "meteor": meteor_note, "images": images}


def _add_meteor(hypotheses: list[list[str]], references: list[list[list[str]]], corpus: dict,
                per_image: list[dict]) -> str:
    """Add METEOR of tokenized captions to the scores when the jar runs; return 'computed' or why not."""
    try:
        score, images = meteor(hypotheses, references)
    except MeteorUnavailable as exc:
        return f"unavailable: {exc}"
    corpus["meteor"] = score
    for item, value in zip(per_image, images):
        item["meteor"] = value
    return "computed"


def worst(report: dict[str, Any], n: int, metric: str = "cider_d") -> list[dict[str, Any]]:
    """The ``n`` images with the lowest ``metric`` (ties in input order)."""
    return sorted(report["images"], key=lambda item: item["scores"][metric])[:n]
