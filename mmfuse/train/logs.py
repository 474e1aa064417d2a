"""What a training run logs besides ``metrics.jsonl``: the training loss of every optimiser step
(``steps.jsonl``, written with the epoch's metrics), a PNG of its curves after every epoch
(``curves.png``: the loss per step, the 0-1 validation metrics, and CIDEr-D on its own axes, the best
epoch marked), and TensorBoard event files (``--tensorboard``, in ``runs/<run>/tensorboard``; needs
the ``tensorboard`` package).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from mmfuse.errors import MmfuseError
from mmfuse.workspace import RunDir, atomic_write_bytes, atomic_write_text, read_jsonl

TENSORBOARD_DIR = "tensorboard"
UNBOUNDED = ("val_cider_d",)  # validation metrics not in [0, 1]: drawn on axes of their own


def check_tensorboard() -> None:
    """Fail at once, before training, when ``--tensorboard`` cannot work here."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise MmfuseError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or drop --tensorboard; metrics.jsonl and curves.png are always written)") from None


class RunLogs:
    """Per-step and per-epoch logging of one run (rank 0 only)."""

    def __init__(self, run_dir: Path, tensorboard: bool, steps_per_epoch: int):
        self.files = RunDir(run_dir)
        self.steps_per_epoch = steps_per_epoch
        self.losses: list[tuple[int, float]] = []  # (optimiser step, its training loss)
        self.writer = None
        if tensorboard:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))

    def resume(self, step: int) -> None:
        """Continue the step log of a resumed run: the steps up to ``step`` (those of its checkpoint)."""
        self.losses = [(s, loss) for s, loss in read_steps(self.files.steps) if s <= step]

    def step(self, step: int, loss: float, lr: float) -> None:
        self.losses.append((step, loss))
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any], history: list[dict[str, Any]], metric: str) -> None:
        if self.writer is not None:
            for key, value in record.items():
                if key.startswith("val_") or key == "train_loss":
                    self.writer.add_scalar(f"epoch/{key}", value, record["epoch"])
            self.writer.flush()
        atomic_write_text(self.files.steps, "".join(json.dumps({"step": s, "loss": loss}) + "\n"
                                                    for s, loss in self.losses))
        atomic_write_bytes(self.files.curves, curves_png(history, metric, self.losses, self.steps_per_epoch))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_steps(path: Path) -> list[tuple[int, float]]:
    """The (step, loss) pairs of a ``steps.jsonl`` (none when it is missing or unreadable)."""
    pairs = []
    for record in read_jsonl(path):
        try:
            pairs.append((int(record["step"]), float(record["loss"])))
        except (ValueError, KeyError, TypeError):
            continue
    return pairs


def curves_png(history: list[dict[str, Any]], metric: str, losses: list[tuple[int, float]],
               steps_per_epoch: int) -> bytes:
    """The run's curves: the training loss of every step (x in epochs, the epoch means as dots), the
    validation metrics in [0, 1] (the selection metric ``metric`` bold), and the unbounded ones
    (CIDEr-D) on axes of their own; a dashed line marks the best epoch on each."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    keys = sorted(k for k in history[-1] if k.startswith("val_"))
    groups = [[k for k in keys if k not in UNBOUNDED], [k for k in keys if k in UNBOUNDED]]
    groups = [g for g in groups if g]
    figure = Figure(figsize=(5 * (1 + len(groups)), 4), dpi=100)
    panels = figure.subplots(1, 1 + len(groups), squeeze=False)[0]
    marker = "o" if len(epochs) <= 30 else None
    loss = panels[0]
    if losses:
        loss.plot([s / steps_per_epoch for s, _ in losses], [v for _, v in losses], linewidth=0.8, alpha=0.6,
                  label="per step")
    loss.plot(epochs, [r["train_loss"] for r in history], marker="o", linestyle="none", label="epoch mean")
    loss.set(title="training loss", xlabel="epoch")
    loss.legend(fontsize="small")
    for axes, group in zip(panels[1:], groups):
        for key in group:
            bold = key == f"val_{metric}"
            axes.plot(epochs, [r.get(key, float("nan")) for r in history], marker=marker, label=key[4:],
                      linewidth=2.5 if bold else 1.0)
        axes.set(title="validation" if group[0] not in UNBOUNDED else "validation (unbounded)", xlabel="epoch")
        axes.legend(fontsize="small")
    best = [r["epoch"] for r in history if r.get("best")]
    for axes in panels:
        if best:
            axes.axvline(best[-1], color="grey", linestyle="--", linewidth=1)
        axes.grid(alpha=0.3)
        axes.set_xlim(0 if losses else 0.5, max(epochs) + 0.5)
        axes.xaxis.get_major_locator().set_params(integer=True)
    if best:
        panels[-1].annotate(f"best epoch {best[-1]}", (best[-1], 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", fontsize="small", color="grey")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
