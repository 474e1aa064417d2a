"""The training loop: teacher-forced cross-entropy, validation on GENERATED captions, checkpoints.

After every epoch the model captions the validation images (greedy) and is scored with BLEU-1..4,
ROUGE-L and CIDEr-D; ``best.safetensors`` keeps the epoch with the best ``select_metric`` (CIDEr-D
by default), ``last.safetensors`` the latest. One JSON line per epoch goes to ``metrics.jsonl``.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig, RunConfig, to_dict
from mmfuse.data.dataset import CaptionDataset, Record, load_manifest, load_split, load_vocab
from mmfuse.data.vocab import PAD_ID
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.inference import caption_files
from mmfuse.metrics.captions import caption_scores
from mmfuse.metrics.ptb import coco_tokenize
from mmfuse.models.captioner import Captioner, build_captioner, check_parts, count_parameters
from mmfuse.models.checkpoint import save_weights
from mmfuse.ui import progress
from mmfuse.workspace import Workspace, append_jsonl, atomic_write_json

EpochHook = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    config: RunConfig
    best_epoch: int
    best_score: float
    history: list[dict[str, Any]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(workspace: Workspace, cfg: RunConfig, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train a captioner as ``cfg`` says, into ``runs/<cfg.train.run>`` of ``workspace``."""
    cfg = _resolve(workspace, cfg)
    data_dir = workspace.existing_dataset(cfg.train.data)
    vocab = load_vocab(data_dir)
    train_set, val_records = _load_data(data_dir, cfg, vocab)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_captioner(cfg.model, len(vocab)).to(device)
    run_dir = _create_run_dir(workspace, cfg, vocab.to_json())
    loop = _Loop(model, cfg, train_set, val_records, vocab, device, run_dir)
    try:
        return loop.run(on_epoch)
    except KeyboardInterrupt:
        raise MmfuseError(f"training interrupted; checkpoints of finished epochs are in {run_dir}", exit_code=130) from None


def _resolve(workspace: Workspace, cfg: RunConfig) -> RunConfig:
    """Fill what depends on the data set (image size) and the clock (run name); validate."""
    cfg.validate()
    check_parts(cfg.model)
    manifest = load_manifest(workspace.existing_dataset(cfg.train.data))
    if manifest.get("task", "caption") != "caption":
        raise MmfuseError(f"data set {cfg.train.data!r} is for task {manifest.get('task')!r}, not captioning")
    model = cfg.model if cfg.model.image_size else replace(cfg.model, image_size=int(manifest.get("image_size") or 224))
    run = cfg.train.run or f"{cfg.train.data}-{cfg.model.fusion}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = replace(cfg, model=model, train=replace(cfg.train, run=run))
    if workspace.run_dir(run).exists() and not cfg.train.overwrite:
        raise MmfuseError(f"run {run!r} already exists in {workspace.root / 'runs'}; pass --overwrite or choose another --run")
    return cfg


def _load_data(data_dir: Path, cfg: RunConfig, vocab) -> tuple[CaptionDataset, list[Record]]:
    train_records = load_split(data_dir, "train")
    val_records = load_split(data_dir, "val")
    dataset = CaptionDataset(train_records, vocab, cfg.model.image_size, cfg.train.captions_per_image, cfg.train.seed)
    return dataset, val_records


def _create_run_dir(workspace: Workspace, cfg: RunConfig, vocab_json: dict[str, Any]) -> Path:
    run_dir = workspace.run_dir(cfg.train.run)
    if run_dir.exists():  # _resolve refused this unless --overwrite
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "vocab.json", vocab_json)
    atomic_write_json(run_dir / "config.json", to_dict(cfg))
    return run_dir


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: cosine decay to 0 over ``total_steps``, or constant."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class _Loop:
    """State of one training run (model, optimiser, data) and its epoch loop."""

    def __init__(self, model: Captioner, cfg: RunConfig, train_set: CaptionDataset, val_records: list[Record], vocab, device, run_dir: Path):
        self.model, self.cfg, self.vocab, self.device, self.run_dir = model, cfg, vocab, device, run_dir
        self.train_set, self.val_records = train_set, val_records
        tc = cfg.train
        generator = torch.Generator().manual_seed(tc.seed)
        self.loader = DataLoader(train_set, batch_size=tc.batch_size, shuffle=True, generator=generator,
                                 collate_fn=train_set.collate, drop_last=False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = _scheduler(self.optimizer, tc.lr_schedule, tc.epochs * len(self.loader))
        self.val_decode = DecodeConfig(beam_size=1, max_length=cfg.decode.max_length)
        self.val_refs = [[coco_tokenize(c) for c in r.captions] for r in val_records]  # tokenized once

    def run(self, on_epoch: EpochHook | None) -> TrainResult:
        history: list[dict[str, Any]] = []
        best_epoch, best = 0, -1.0
        metric = self.cfg.train.select_metric
        with progress() as bar:
            task = bar.add_task("train", total=self.cfg.train.epochs * len(self.loader), info="")
            for epoch in range(1, self.cfg.train.epochs + 1):
                record = self._epoch(epoch, bar, task)
                record["best"] = record[f"val_{metric}"] > best
                if record["best"]:
                    best_epoch, best = epoch, record[f"val_{metric}"]
                self._save(epoch, record)
                history.append(record)
                if on_epoch:
                    on_epoch(record)
        return TrainResult(self.run_dir, self.cfg, best_epoch, best, history)

    def _epoch(self, epoch: int, bar, task) -> dict[str, Any]:
        self.model.train()
        self.train_set.set_epoch(epoch)
        start, total, count, images = time.perf_counter(), 0.0, 0, 0
        for batch in self.loader:
            loss = self._step(batch)
            total, count, images = total + loss, count + 1, images + batch["images"].size(0)
            bar.update(task, advance=1, info=f"epoch {epoch} loss {total / count:.3f}")
        seconds = time.perf_counter() - start
        scores = self.validate()
        return {"epoch": epoch, "train_loss": total / max(count, 1), "seconds": round(seconds, 3),
                "images_per_s": round(images / seconds, 1), "lr": self.optimizer.param_groups[0]["lr"],
                **{f"val_{k}": v for k, v in scores.items()}}

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        images = batch["images"].to(self.device, non_blocking=True)
        tokens = batch["tokens"].to(self.device)
        logits = self.model(images, tokens[:, :-1], batch["image_index"].to(self.device))  # (M, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), ignore_index=PAD_ID)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        """Corpus caption metrics of greedy captions of the validation images (never teacher-forced)."""
        hyps = [coco_tokenize(" ".join(words)) for words in caption_files(
            self.model, self.vocab, [r.image for r in self.val_records], self.cfg.model.image_size, self.val_decode)]
        return caption_scores(hyps, self.val_refs)["corpus"]

    def _save(self, epoch: int, record: dict[str, Any]) -> None:
        meta = {"epoch": str(epoch), "val_" + self.cfg.train.select_metric: str(record[f"val_{self.cfg.train.select_metric}"]),
                "parameters": str(count_parameters(self.model))}
        save_weights(self.run_dir / "last.safetensors", self.model, meta)
        if record["best"]:
            save_weights(self.run_dir / "best.safetensors", self.model, meta)
        append_jsonl(self.run_dir / "metrics.jsonl", record)
