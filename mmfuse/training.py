"""The training loop for both tasks, with checkpoints.

Captioning: teacher-forced cross-entropy; after every epoch the model captions the validation
images (greedy, never teacher-forced) and is scored with BLEU-1..4, ROUGE-L and CIDEr-D.
Classification: cross-entropy over the labels (``--class-weights balanced`` for imbalanced data);
validation accuracy and macro F1. ``best.safetensors`` keeps the epoch with the best
``select_metric`` (CIDEr-D / accuracy by default), ``last.safetensors`` the latest. One JSON line
per epoch goes to ``metrics.jsonl``.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig, RunConfig, to_dict
from mmfuse.data.dataset import CaptionDataset, load_labelled_split, load_manifest, load_split, load_vocab
from mmfuse.data.features import open_cache
from mmfuse.data.vocab import PAD_ID, Vocab
from mmfuse.device import resolve_device
from mmfuse.errors import MmfuseError
from mmfuse.inference import caption_files, labelled_dataset, predict_probabilities
from mmfuse.metrics.captions import caption_scores
from mmfuse.metrics.classification import classification_report
from mmfuse.metrics.ptb import coco_tokenize
from mmfuse.models.captioner import build_captioner, count_parameters
from mmfuse.models.checkpoint import load_encoder_from_run, save_weights
from mmfuse.models.classifier import build_classifier
from mmfuse.models.encoders import check_weights_available
from mmfuse.models.parts import resolve_parts
from mmfuse.ui import console, progress
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
    """Train a captioner or a classifier as ``cfg`` says, into ``runs/<cfg.train.run>`` of ``workspace``."""
    cfg, manifest = _resolve(workspace, cfg)
    data_dir = workspace.existing_dataset(cfg.train.data)
    vocab = load_vocab(data_dir)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    features = _feature_cache(data_dir, cfg)
    if cfg.model.task == "caption":
        task: _Task = _CaptionTask(cfg, data_dir, vocab, device, features)
    else:
        task = _ClassifyTask(cfg, data_dir, vocab, list(manifest["labels"]), device, features)
    if cfg.train.encoder_from:  # checked before the run directory is made: a bad source writes nothing
        load_encoder_from_run(task.model.encoder, workspace.existing_run(cfg.train.encoder_from), cfg.model)
    run_dir = _create_run_dir(workspace, cfg, vocab.to_json(), getattr(task, "labels", None))
    loop = _Loop(task, cfg, device, run_dir)
    try:
        return loop.run(on_epoch)
    except KeyboardInterrupt:
        raise MmfuseError(f"training interrupted; checkpoints of finished epochs are in {run_dir}", exit_code=130) from None


def _feature_cache(data_dir: Path, cfg: RunConfig):
    """The data set's feature cache for this model's frozen encoder, if there is one (and says so)."""
    if cfg.train.encoder_from:  # that run's weights replace the backbone the cache was made with
        return None
    cache = open_cache(data_dir, cfg.model)
    if cache is not None:
        console().print(f"training reads image features from the cache {cache.path} (frozen {cfg.model.encoder}); "
                        "validation reads pixels", markup=False)
    return cache


def _resolve(workspace: Workspace, cfg: RunConfig) -> tuple[RunConfig, dict[str, Any]]:
    """Fill what depends on the data set (task, image size), the parts (``auto``) and the clock
    (run name); validate. Returns the resolved config and the data set's manifest."""
    cfg.validate()
    check_weights_available(cfg.model)  # before anything slow: a missing file fails in seconds
    manifest = load_manifest(workspace.existing_dataset(cfg.train.data))
    task = str(manifest.get("task", "caption"))
    if cfg.model.task not in ("auto", task):
        raise MmfuseError(f"data set {cfg.train.data!r} is for task {task!r}, not {cfg.model.task!r}"
                          f" (use --task {task} or another --data)")
    model = resolve_parts(replace(cfg.model, task=task), task)
    if not model.image_size:
        model = replace(model, image_size=int(manifest.get("image_size") or 224))
    run = cfg.train.run or f"{cfg.train.data}-{cfg.model.fusion}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_cfg = replace(cfg.train, run=run, select_metric=cfg.train.metric_for(task))
    if task == "caption" and cfg.train.class_weights != "none":
        raise MmfuseError("--class-weights applies to classification (--task classify), not captioning")
    cfg = replace(cfg, model=model, train=train_cfg)
    if cfg.train.encoder_from:
        workspace.existing_run(cfg.train.encoder_from)
    if workspace.run_dir(run).exists() and not cfg.train.overwrite:
        raise MmfuseError(f"run {run!r} already exists in {workspace.root / 'runs'}; pass --overwrite or choose another --run")
    return cfg, manifest


class _Task(Protocol):
    """What the loop needs from a task: a model, training data, a loss and validation scores."""

    model: nn.Module
    train_set: Any

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def validate(self) -> dict[str, float]: ...


class _CaptionTask:
    """Teacher-forced cross-entropy; validation scores GENERATED captions (greedy)."""

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, device: torch.device, features=None):
        self.cfg, self.vocab, self.device = cfg, vocab, device
        self.model = build_captioner(cfg.model, len(vocab)).to(device)
        self.train_set = CaptionDataset(load_split(data_dir, "train"), vocab, cfg.model.image_size,
                                        cfg.train.captions_per_image, cfg.train.seed, features)
        self.val_records = load_split(data_dir, "val")
        self.val_refs = [[coco_tokenize(c) for c in r.captions] for r in self.val_records]  # tokenized once
        self.val_decode = DecodeConfig(beam_size=1, max_length=cfg.decode.max_length)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["tokens"].to(self.device)
        logits = self.model(batch["images"].to(self.device, non_blocking=True), tokens[:, :-1],
                            batch["image_index"].to(self.device))  # (M, T-1, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1), ignore_index=PAD_ID)

    def validate(self) -> dict[str, float]:
        """Corpus caption metrics of greedy captions of the validation images (never teacher-forced)."""
        hyps = [coco_tokenize(" ".join(words)) for words in caption_files(
            self.model, self.vocab, [r.image for r in self.val_records], self.cfg.model.image_size, self.val_decode)]
        return caption_scores(hyps, self.val_refs)["corpus"]


class _ClassifyTask:
    """Cross-entropy over the labels (optionally class-weighted); validation accuracy and macro F1."""

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, labels: list[str], device: torch.device,
                 features=None):
        self.cfg, self.labels, self.device = cfg, labels, device
        self.model = build_classifier(cfg.model, len(vocab), len(labels)).to(device)
        train_records = load_labelled_split(data_dir, "train")
        self.train_set = labelled_dataset(train_records, vocab, labels, cfg.model.image_size, features)
        self.val_set = labelled_dataset(load_labelled_split(data_dir, "val"), vocab, labels, cfg.model.image_size)
        self.weights = balanced_class_weights(self.train_set.labels, len(labels)).to(device) \
            if cfg.train.class_weights == "balanced" else None

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.model(batch["images"].to(self.device, non_blocking=True), batch["tokens"].to(self.device))  # (B, C)
        return F.cross_entropy(logits, batch["labels"].to(self.device), weight=self.weights)

    def validate(self) -> dict[str, float]:
        probs = predict_probabilities(self.model, self.val_set)  # (n, C)
        report = classification_report(self.val_set.labels, probs.argmax(1).tolist(), len(self.labels))
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights ``n / (C * count_c)`` (C,); an absent class counts as 1."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp_min(1))


def _create_run_dir(workspace: Workspace, cfg: RunConfig, vocab_json: dict[str, Any], labels: list[str] | None) -> Path:
    run_dir = workspace.run_dir(cfg.train.run)
    if run_dir.exists():  # _resolve refused this unless --overwrite
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "vocab.json", vocab_json)
    if labels is not None:
        atomic_write_json(run_dir / "labels.json", labels)
    atomic_write_json(run_dir / "config.json", to_dict(cfg))
    return run_dir


def lr_factor(step: int, kind: str, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the peak learning rate before optimiser step ``step`` (0-based): linear warmup
    over ``warmup_steps`` (1/w, 2/w, ..., 1), then constant or a cosine decay to 0 over the rest."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
               warmup_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule (see :func:`lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, kind, total_steps, warmup_steps))


class _Loop:
    """State of one training run (task, optimiser, data order) and its epoch loop."""

    def __init__(self, task: _Task, cfg: RunConfig, device: torch.device, run_dir: Path):
        self.task, self.model, self.cfg, self.device, self.run_dir = task, task.model, cfg, device, run_dir
        tc = cfg.train
        generator = torch.Generator().manual_seed(tc.seed)
        self.loader = DataLoader(task.train_set, batch_size=tc.batch_size, sampler=task.train_set.sampler(generator),
                                 generator=generator,  # as before: the loader's per-epoch seed draw from it, not torch's
                                 collate_fn=task.train_set.collate, drop_last=False,
                                 num_workers=0 if task.train_set.features is not None else tc.workers)  # cache: no decoding to spread
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = _scheduler(self.optimizer, tc.lr_schedule, tc.epochs * len(self.loader), tc.warmup_steps)

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
        if hasattr(self.task.train_set, "set_epoch"):
            self.task.train_set.set_epoch(epoch)
        start, total, count, images = time.perf_counter(), 0.0, 0, 0
        for batch in self.loader:
            loss = self._step(batch)
            total, count, images = total + loss, count + 1, images + batch["images"].size(0)
            bar.update(task, advance=1, info=f"epoch {epoch} loss {total / count:.3f}")
        seconds = time.perf_counter() - start
        scores = self.task.validate()
        return {"epoch": epoch, "train_loss": total / max(count, 1), "seconds": round(seconds, 3),
                "images_per_s": round(images / seconds, 1), "lr": self.optimizer.param_groups[0]["lr"],
                **{f"val_{k}": v for k, v in scores.items()}}

    def _step(self, batch: dict[str, torch.Tensor]) -> float:
        loss = self.task.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def _save(self, epoch: int, record: dict[str, Any]) -> None:
        metric = self.cfg.train.select_metric
        meta = {"epoch": str(epoch), f"val_{metric}": str(record[f"val_{metric}"]),
                "parameters": str(count_parameters(self.model))}
        save_weights(self.run_dir / "last.safetensors", self.model, meta)
        if record["best"]:
            save_weights(self.run_dir / "best.safetensors", self.model, meta)
        append_jsonl(self.run_dir / "metrics.jsonl", record)
