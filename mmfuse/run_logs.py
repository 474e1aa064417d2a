"""What a training run logs besides ``metrics.jsonl``: a PNG of its curves after every epoch
(``curves.png``: training loss and the validation metrics per epoch), and TensorBoard event files
(``--tensorboard``, in ``runs/<run>/tensorboard``; needs the ``tensorboard`` package).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError
from mmfuse.workspace import atomic_write_bytes

CURVES = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def check_tensorboard() -> None:
    """Fail at once, before training, when ``--tensorboard`` cannot work here."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MmfuseError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or drop --tensorboard; metrics.jsonl and curves.png are always written)") from None


class RunLogs:
    """Per-step and per-epoch logging of one run (rank 0 only)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.run_dir = run_dir
        self.writer = None
        if tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

    def step(self, step: int, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any], history: list[dict[str, Any]], metric: str) -> None:
        if self.writer is not None:
            for key, value in record.items():
                if key.startswith("val_") or key == "train_loss":
                    self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.writer.flush()
        atomic_write_bytes(self.run_dir / CURVES, curves_png(history, metric))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def curves_png(history: list[dict[str, Any]], metric: str) -> bytes:
    """Two panels, per epoch: the training loss, and every validation metric (the selection
    metric ``metric`` drawn bold)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    loss, scores = figure.subplots(1, 2)
    loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    loss.set(title="training loss", xlabel="epoch")
    for key in sorted(k for k in history[-1] if k.startswith("val_")):
        bold = key == f"val_{metric}"
        scores.plot(epochs, [r.get(key, float("nan")) for r in history], marker="o", label=key[4:],
                    linewidth=2.5 if bold else 1.0)
    scores.set(title="validation", xlabel="epoch")
    scores.legend(fontsize="small")
    for axes in (loss, scores):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
