"""``evaluate``: caption a split of the run's data set with the run's model and score it."""

from __future__ import annotations

from typing import Any

from mmfuse.config import to_dict
from mmfuse.data.dataset import load_split
from mmfuse.device import resolve_device
from mmfuse.inference import caption_files
from mmfuse.metrics.bleu import corpus_bleu
from mmfuse.models.checkpoint import load_run, read_metadata
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
) -> dict[str, Any]:
    """Generate captions for ``split`` and score them; the report is written to ``eval-<split>.json``.

    Decoding settings default to the run's (``config.json``); ``beam_size``/``max_length`` override.

    Returns:
        the report: ``metrics`` (BLEU-1..4), decoding settings, and per-image captions with references.
    """
    run_dir = workspace.existing_run(run)
    loaded = load_run(run_dir, checkpoint, resolve_device(device))
    decode = loaded.config.decode.override(beam_size, max_length)
    records = load_split(workspace.existing_dataset(loaded.config.train.data), split)
    hyps = list(caption_files(loaded.model, loaded.vocab, [r.image for r in records],
                              loaded.config.model.image_size, decode, batch_size))
    report = {
        "run": run,
        "data": loaded.config.train.data,
        "split": split,
        "checkpoint": checkpoint,
        "epoch": int(read_metadata(loaded.weights).get("epoch", 0)),
        "decode": to_dict(decode),
        "num_images": len(records),
        "metrics": corpus_bleu(hyps, [r.tokens for r in records]),
        "captions": [
            {"id": r.id, "image": str(r.image), "caption": " ".join(h), "references": list(r.captions)}
            for r, h in zip(records, hyps)
        ],
    }
    atomic_write_json(run_dir / f"eval-{split}.json", report)
    return report

