"""The training loop for both tasks, with checkpoints.

Captioning: teacher-forced cross-entropy, or self-critical sequence training from a trained
captioner (``--scst``); after every epoch the model captions the validation images (greedy, never
teacher-forced) and is scored with BLEU-1..4, ROUGE-L and CIDEr-D. Classification: cross-entropy
over the labels (``--class-weights balanced`` for imbalanced data); validation accuracy and macro
F1. ``best.safetensors`` keeps the epoch with the best ``select_metric`` (CIDEr-D / accuracy by
default), ``last.safetensors`` the latest; ``metrics.jsonl`` and ``curves.png`` the history.

One optimiser step sums the losses of its micro-batches (``--accumulate``) and of every DDP rank
(:mod:`mmfuse.train.distributed`) and divides by their global count, so it is the update of one batch of
that size. Mixed precision runs the forward pass under autocast (fp16 with a gradient scaler).
The resumable checkpoint (:mod:`mmfuse.train.state`) is written after every epoch, every
``--save-every`` steps, and on SIGINT/SIGTERM, after the step in progress.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig, RunConfig, read_run_config, to_dict
from mmfuse.data.dataset import CaptionDataset, labelled_dataset, load_vocab, pad
from mmfuse.data.features import ignore_interrupts, open_cache
from mmfuse.data.records import load_labelled_split, load_manifest, load_split
from mmfuse.data.vocab import BOS_ID, EOS_ID, IGNORE, PAD_ID, Vocab
from mmfuse.device import resolve_device
from mmfuse.errors import Interrupted, MmfuseError, Terminated
from mmfuse.generate.decoding import greedy, sample
from mmfuse.generate.inference import caption_files, predict_probabilities
from mmfuse.metrics.captions import caption_scores
from mmfuse.metrics.cider_reward import CiderDReward
from mmfuse.metrics.classification import classification_report
from mmfuse.metrics.ptb import coco_tokenize
from mmfuse.models.caption_models import build_caption_model, reference_ids
from mmfuse.models.captioner import (
    count_parameters,
    generation_log_probs,
)
from mmfuse.models.checkpoint import (
    load_checked,
    load_encoder_from_run,
    model_tensors,
    pick_weights,
    read_weights,
    save_weights,
)
from mmfuse.models.classifier import build_classifier
from mmfuse.models.encoders import check_weights_available
from mmfuse.models.hub import hf_id, is_hf, locate
from mmfuse.models.parts import resolve_parts
from mmfuse.models.vision_towers import is_tower, tower_image_size
from mmfuse.progress import progress
from mmfuse.train.answering import AnswerObjective
from mmfuse.train.distributed import ShardedBatches, World, start, stop, world_from_env
from mmfuse.train.logs import RunLogs, check_tensorboard
from mmfuse.train.state import Progress, load_checkpoint, save_checkpoint
from mmfuse.ui import console
from mmfuse.workspace import (
    RunDir,
    Workspace,
    atomic_write_json,
    atomic_write_text,
    exclusive,
    link_or_copy,
    read_json,
)

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


def train(workspace: Workspace, cfg: RunConfig, on_epoch: EpochHook | None = None, resume: bool = False) -> TrainResult:
    """Train a captioner or a classifier as ``cfg`` says, into ``runs/<cfg.train.run>`` of ``workspace``;
    ``resume``: continue run ``cfg.train.run`` from its resumable checkpoint, with its own config.

    Under ``torchrun`` every process calls this; they train one model with DDP (see
    :mod:`mmfuse.train.distributed`) and rank 0 writes the run.
    """
    world = world_from_env()
    if resume:
        cfg = _saved_config(workspace, cfg.train.run)
    cfg.validate()
    with workspace.reading_dataset(cfg.train.data):  # prepare-data cannot replace it under the training
        device = start(world, resolve_device(cfg.train.device))
        try:
            return _train(workspace, cfg, on_epoch, resume, world, device)
        finally:
            stop(world)


def _train(workspace: Workspace, cfg: RunConfig, on_epoch: EpochHook | None, resume: bool, world: World,
           device: torch.device) -> TrainResult:
    cfg, manifest = _resolve(workspace, cfg, resume)
    cfg = world.share(cfg)  # one run name (it may hold the clock) for every rank
    if cfg.train.tensorboard:
        check_tensorboard()
    data_dir = workspace.existing_dataset(cfg.train.data)
    vocab = load_vocab(data_dir)
    seed_everything(cfg.train.seed)
    features = _feature_cache(data_dir, cfg, world)
    if cfg.train.scst:
        objective: Objective = ScstObjective(cfg, data_dir, vocab, device, features)
        if not resume:
            _load_source_weights(objective.model, workspace.existing_run(cfg.train.scst_from))
    elif cfg.model.task == "caption":
        objective = CaptionObjective(cfg, data_dir, vocab, device, features)
    elif cfg.model.task == "answer":
        objective = AnswerObjective(cfg, data_dir, vocab, device, features)
    else:
        objective = ClassifyObjective(cfg, data_dir, vocab, list(manifest["labels"]), device, features)
    if cfg.train.encoder_from and not resume:  # checked before the run directory is made: a bad source writes nothing
        load_encoder_from_run(objective.model.encoder, workspace.existing_run(cfg.train.encoder_from), cfg.model)
    if world.main and not resume:
        _say_if_random_backbone(cfg)
    world.barrier()  # every rank has checked the run name before rank 0 makes the directory
    run_dir = workspace.run_dir(cfg.train.run)
    with exclusive(run_dir, f"run {cfg.train.run!r}") if world.main else contextlib.nullcontext():
        created = world.main and not resume
        if created:
            if run_dir.exists() and not cfg.train.overwrite:  # made since it was checked
                raise MmfuseError(f"run {cfg.train.run!r} already exists in {workspace.root / 'runs'}; pass "
                                  "--overwrite or choose another --run")
            _create_run_dir(workspace, cfg, vocab.to_json(), objective.labels)
        world.barrier()
        try:
            return _run_loop(objective, cfg, device, run_dir, world, on_epoch, resume)
        except BaseException:
            if created and not RunDir(run_dir).checkpoint.exists():  # nothing to resume: no half-made run is left
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _say_if_random_backbone(cfg: RunConfig) -> None:
    """One warning when a torchvision backbone (built for ImageNet-scale training) starts from random
    weights: on a small data set it learns next to nothing, which otherwise shows only as a CIDEr-D of 0."""
    from mmfuse.models.backbones import SPECS

    m = cfg.model
    if m.encoder in SPECS and not (m.pretrained or m.weights or cfg.train.encoder_from or cfg.train.scst):
        console().print(f"mmfuse: warning: {m.encoder} starts from random weights (no --pretrained or --weights): on a small "
                        f"data set it learns little; add --pretrained (ImageNet weights from the torch hub cache) or "
                        f"--weights FILE", markup=False)


def _run_loop(objective: Objective, cfg: RunConfig, device: torch.device, run_dir: Path, world: World,
              on_epoch: EpochHook | None, resume: bool) -> TrainResult:
    loop = _Loop(objective, cfg, device, run_dir, world)
    if resume:
        loop.resume()
        p = loop.progress
        if world.main:
            console().print(f"resuming run {cfg.train.run} at epoch {p.epoch}, step {p.step} "
                            f"(its saved config; other flags are ignored)", markup=False)
    try:
        return loop.run(on_epoch)
    except torch.OutOfMemoryError:
        raise MmfuseError(out_of_memory(cfg)) from None
    except KeyboardInterrupt as exc:
        if not RunDir(run_dir).checkpoint.exists():
            raise Interrupted("training interrupted before its first checkpoint: there is nothing to resume",
                              exc) from None
        raise Interrupted(f"training interrupted; the last resumable checkpoint is in {run_dir} "
                          f"(mmfuse train --resume --run {cfg.train.run})", exc) from None


def out_of_memory(cfg: RunConfig) -> str:
    """What to say when the device runs out of memory: the options that lower it, for this model."""
    lower = [f"a smaller --batch-size (now {cfg.train.batch_size}; --accumulate keeps the effective batch)"]
    if cfg.train.precision == "fp32":
        lower.append("--precision bf16")
    if is_hf(cfg.model.decoder):
        if not cfg.model.gradient_checkpointing:
            lower.append("--gradient-checkpointing")
        if not (cfg.model.lora or cfg.model.finetune_lm) and cfg.model.frozen_dtype == "fp32":
            lower.append("--frozen-dtype bf16")
        if cfg.model.finetune_lm:
            lower.append("--lora R instead of --finetune-lm")
        if cfg.model.fusion in ("mlp", "pixel-shuffle"):
            lower.append("fewer image tokens (--fusion resampler or qformer with --image-tokens, or --shuffle 4)")
    return f"out of memory on {cfg.train.device} while training; lower it with " + ", ".join(lower)


def _scst_source(workspace: Workspace, cfg: RunConfig) -> RunConfig:
    """``cfg`` with the model of the captioner ``--scst`` starts from (``--from``), checked to fit."""
    source_dir = workspace.existing_run(cfg.train.scst_from)
    source = read_run_config(source_dir)
    if source.model.task != "caption":
        raise MmfuseError(f"--scst fine-tunes a captioner; run {cfg.train.scst_from!r} is a {source.model.task} model")
    data_vocab = read_json(workspace.existing_dataset(cfg.train.data) / "vocab.json", "data set vocabulary")
    if read_json(RunDir(source_dir).vocab, "run vocabulary") != data_vocab:
        raise MmfuseError(f"run {cfg.train.scst_from!r} was trained with another vocabulary than data set "
                          f"{cfg.train.data!r}: --scst needs the data set it was trained on (--data {source.train.data})")
    return replace(cfg, model=source.model)


def _load_source_weights(model: nn.Module, source_dir: Path) -> None:
    weights = pick_weights(source_dir, "best")
    load_checked(model, read_weights(weights), f"weights {weights}", "the model --scst fine-tunes")


def _saved_config(workspace: Workspace, run: str) -> RunConfig:
    """The config a run was started with (``--resume``)."""
    if not run:
        raise MmfuseError("--resume continues a run: name it with --run")
    run_dir = workspace.existing_run(run)
    if not RunDir(run_dir).checkpoint.exists():
        config = read_run_config(run_dir)
        epochs = len(RunDir(run_dir).history())
        raise MmfuseError(f"run {run!r} has no resumable checkpoint: it has finished ({epochs} of "
                          f"{config.train.epochs} epochs; a finished run keeps none) or was written by an older "
                          f"mmfuse, so there is nothing to resume; its weights caption and evaluate, and "
                          f"`mmfuse train --run {run} --overwrite ...` trains it again from the start")
    return read_run_config(run_dir)


def _feature_cache(data_dir: Path, cfg: RunConfig, world: World):
    """The data set's feature cache for this model's frozen encoder, if there is one (and says so)."""
    if cfg.train.encoder_from:  # that run's weights replace the backbone the cache was made with
        return None
    cache = open_cache(data_dir, cfg.model)
    if cache is not None and world.main:
        console().print(f"training reads image features from the cache {cache.path} (frozen {cfg.model.encoder}); "
                        "validation reads pixels", markup=False)
    return cache


def _resolve(workspace: Workspace, cfg: RunConfig, resume: bool = False) -> tuple[RunConfig, dict[str, Any]]:
    """Fill what depends on the data set (task, image size), the parts (``auto``) and the clock
    (run name); validate. Returns the resolved config and the data set's manifest."""
    cfg.validate()
    if cfg.train.scst and not resume:
        cfg = _scst_source(workspace, cfg)
    check_weights_available(cfg.model)  # before anything slow: a missing file fails in seconds
    manifest = load_manifest(workspace.existing_dataset(cfg.train.data))
    task = str(manifest.get("task", "caption"))
    if cfg.model.task not in ("auto", task):
        raise MmfuseError(f"data set {cfg.train.data!r} is for task {task!r}, not {cfg.model.task!r}"
                          f" (use --task {task} or another --data)")
    model = resolve_parts(replace(cfg.model, task=task), task)
    if is_hf(model.decoder) and not resume:  # which version of the language model this run is trained on
        if cfg.train.scst:
            raise MmfuseError("--scst fine-tunes mmfuse's own decoders; a run with an hf: decoder cannot use it yet")
        base = locate(hf_id(model.decoder), cfg.train.download)
        model = replace(model, decoder_revision=base.revision, decoder_config_sha256=base.config_sha256)
    if not model.image_size:
        size = tower_image_size(model.encoder) if is_tower(model.encoder) else int(manifest.get("image_size") or 224)
        model = replace(model, image_size=size)
    run = cfg.train.run or f"{cfg.train.data}-{cfg.model.fusion}-{time.strftime('%Y%m%d-%H%M%S')}"
    train_cfg = replace(cfg.train, run=run, select_metric=cfg.train.metric_for(task))
    if task != "classify" and cfg.train.class_weights != "none":
        raise MmfuseError(f"--class-weights applies to classification (--task classify), not to task {task!r}")
    if task == "answer" and cfg.train.scst:
        raise MmfuseError("--scst fine-tunes a captioner with its CIDEr-D reward; it does not apply to answering")
    cfg = replace(cfg, model=model, train=train_cfg)
    if cfg.train.encoder_from:
        workspace.existing_run(cfg.train.encoder_from)
    if workspace.run_dir(run).exists() and not cfg.train.overwrite and not resume:
        raise MmfuseError(f"run {run!r} already exists in {workspace.root / 'runs'}; pass --overwrite or choose another --run")
    return cfg, manifest


class Objective(Protocol):
    """What the loop needs from what it optimises (captioning, SCST or classification): a model,
    training data, a loss and validation scores."""

    model: nn.Module
    train_set: Any  # a data set with sampler(order), collate and features (the cache, or None)
    labels: list[str] | None  # classifiers: the class order of the output units
    eval_mode_training: bool  # the model trains in eval mode (no dropout, frozen batch statistics)

    def start_epoch(self, epoch: int) -> None: ...

    def loss(self, net: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float: ...

    def validate(self) -> dict[str, float]: ...


class CaptionObjective:
    """Teacher-forced cross-entropy; validation scores GENERATED captions (greedy)."""

    labels = None
    eval_mode_training = False

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, device: torch.device, features=None):
        self.cfg, self.device = cfg, device
        model, self.vocab = build_caption_model(cfg.model, vocab, cfg.train.run)  # vocab: the model's text codec
        self.model = model.to(device)
        records = load_split(data_dir, "train")
        encoded, pad_value = reference_ids(records, self.vocab)
        self.train_set = CaptionDataset(records, encoded, cfg.model.image_size, cfg.train.captions_per_image,
                                        cfg.train.seed, features, pad_value)
        self.val_records = load_split(data_dir, "val")
        self.val_refs = [[coco_tokenize(c) for c in r.captions] for r in self.val_records]  # tokenized once
        self.val_decode = DecodeConfig(beam_size=1, max_length=cfg.decode.max_length)

    def start_epoch(self, epoch: int) -> None:
        """Each epoch draws its own subset of an image's references."""
        self.train_set.set_epoch(epoch)

    def loss(self, net: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) cross-entropy over the batch's target tokens."""
        inputs, targets = self.model.teacher_forcing(batch["tokens"].to(self.device))
        logits = net(batch["images"].to(self.device, non_blocking=True), inputs,
                     batch["image_index"].to(self.device))  # (M, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE, reduction="sum", label_smoothing=self.cfg.train.label_smoothing)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """What :meth:`loss` sums over: the target tokens."""
        return float((self.model.teacher_forcing(batch["tokens"])[1] != IGNORE).sum())

    def validate(self) -> dict[str, float]:
        """Corpus caption metrics of greedy captions of the validation images (never teacher-forced)."""
        hyps = [coco_tokenize(" ".join(words)) for words in caption_files(
            self.model, self.vocab, [r.image for r in self.val_records], self.cfg.model.image_size, self.val_decode)]
        return caption_scores(hyps, self.val_refs)["corpus"]


class ScstObjective(CaptionObjective):
    """Self-critical sequence training (Rennie et al. 2017): per image, sample K captions from the
    model, reward each with its CIDEr-D against the image's training references, and raise the
    log-probability of the samples that beat the baseline: ``loss = -sum (r - b) log p(sample)``.
    Baseline: the mean reward of the image's other K - 1 samples ("new SCST", as
    self-critical.pytorch's default) or the greedy caption's reward. Sampling and the
    log-probabilities run in eval mode (no dropout), so the gradient is that of the policy that is
    sampled and evaluated.
    """

    eval_mode_training = True

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, device: torch.device, features=None):
        super().__init__(cfg, data_dir, vocab, device, features)
        self.train_set.k = 10**9  # every reference of an image comes with it (the reward needs them all)
        self.model.encoder.requires_grad_(False)  # as self-critical.pytorch: the image features stay fixed
        self.reward = CiderDReward([[ids[1:-1] for ids in refs] for refs in self.train_set.encoded])
        self.samples = cfg.train.scst_samples

    def loss(self, net: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-(reward - baseline) x log-probability, summed over the batch's sampled captions."""
        images, records = batch["images"].to(self.device, non_blocking=True), batch["records"].tolist()
        k, length = self.samples, self.cfg.decode.max_length
        with torch.no_grad():
            features = self.model.encode(images)
            # new draws for every batch of every epoch, reproducible (and the same after a resume)
            seed = (self.cfg.train.seed * 1_000_003 + self.train_set.epoch) * 1_000_003 + records[0]
            drawn = sample(self.model, features, DecodeConfig(sample=True, n_best=k, max_length=length, seed=seed))
            captions = [g.tokens for per_image in drawn for g in per_image]  # image by image, K each
            rewards = torch.tensor(self.reward([r for r in records for _ in range(k)], captions)).view(-1, k)  # (B, K)
            if self.cfg.train.scst_baseline == "mean":
                baseline = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
            else:
                best = [g.tokens for g in greedy(self.model, features, DecodeConfig(max_length=length))]
                baseline = torch.tensor(self.reward(records, best)).unsqueeze(1)  # (B, 1)
        advantage = (rewards - baseline).view(-1).to(self.device)  # (B*K,)
        ended = [len(c) < length for c in captions]  # shorter than the limit: it ended with <eos>
        tokens = pad([[BOS_ID] + c + ([EOS_ID] if e else []) for c, e in zip(captions, ended)]).to(self.device)
        logits = net(images, tokens[:, :-1], torch.arange(len(records), device=self.device).repeat_interleave(k))
        log_probs = generation_log_probs(logits).gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)  # (B*K, T)
        log_probs = log_probs.masked_fill(tokens[:, 1:] == PAD_ID, 0.0).sum(1)  # (B*K,)
        return -(advantage * log_probs).sum()

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """What :meth:`loss` sums over: the sampled captions."""
        return float(batch["images"].size(0) * self.samples)


class ClassifyObjective:
    """Cross-entropy over the labels (optionally class-weighted); validation accuracy and macro F1."""

    eval_mode_training = False

    def __init__(self, cfg: RunConfig, data_dir: Path, vocab: Vocab, labels: list[str], device: torch.device,
                 features=None):
        self.cfg, self.labels, self.device = cfg, labels, device
        self.model = build_classifier(cfg.model, len(vocab), len(labels)).to(device)
        train_records = load_labelled_split(data_dir, "train")
        self.train_set = labelled_dataset(train_records, vocab, labels, cfg.model.image_size, features)
        self.val_set = labelled_dataset(load_labelled_split(data_dir, "val"), vocab, labels, cfg.model.image_size)
        self.cpu_weights = balanced_class_weights(self.train_set.labels, len(labels)) \
            if cfg.train.class_weights == "balanced" else None  # (C,): loss_weight reads them every step
        self.weights = self.cpu_weights.to(device) if self.cpu_weights is not None else None

    def start_epoch(self, epoch: int) -> None:
        """Nothing changes between epochs but the order (the loop's)."""

    def loss(self, net: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed (class-weighted) cross-entropy over the batch's samples."""
        logits = net(batch["images"].to(self.device, non_blocking=True), batch["tokens"].to(self.device))  # (B, C)
        return F.cross_entropy(logits.float(), batch["labels"].to(self.device), weight=self.weights, reduction="sum",
                               label_smoothing=self.cfg.train.label_smoothing)

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """What :meth:`loss` sums over: the samples, each counted with its class weight."""
        labels = batch["labels"]
        return float(self.cpu_weights[labels].sum()) if self.cpu_weights is not None else float(labels.numel())

    def validate(self) -> dict[str, float]:
        probs = predict_probabilities(self.model, self.val_set)  # (n, C)
        report = classification_report(self.val_set.labels, probs.argmax(1).tolist(), len(self.labels))
        return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights ``n / (C * count_c)`` (C,); an absent class counts as 1."""
    counts = torch.bincount(torch.tensor(labels), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp_min(1))


def _create_run_dir(workspace: Workspace, cfg: RunConfig, vocab_json: dict[str, Any], labels: list[str] | None) -> Path:
    files = workspace.run(cfg.train.run)
    if files.path.exists():  # _resolve refused this unless --overwrite
        shutil.rmtree(files.path)
    files.path.mkdir(parents=True)
    atomic_write_json(files.vocab, vocab_json)
    if labels is not None:
        atomic_write_json(files.labels, labels)
    atomic_write_json(files.config, to_dict(cfg))
    return files.path


def lr_factor(step: int, kind: str, total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1,
              step_epochs: int = 3, gamma: float = 0.8) -> float:
    """Multiplier of the peak learning rate before optimiser step ``step`` (0-based): linear warmup
    over ``warmup_steps`` (1/w, 2/w, ..., 1), then constant, a cosine decay to 0 over the rest, or
    ``step``: times ``gamma`` every ``step_epochs`` epochs of ``steps_per_epoch`` steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** (step // (steps_per_epoch * step_epochs))
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
               steps_per_epoch: int = 1, step_epochs: int = 3, gamma: float = 0.8) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule (see :func:`lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, kind, total_steps, warmup_steps, steps_per_epoch, step_epochs, gamma))


class _StopRequests:
    """SIGINT / SIGTERM while training ask the loop to stop after the current step (and save);
    a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signal: BaseException = KeyboardInterrupt()  # which one asked (the exit code tells)
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class _Loop:
    """State of one training run (objective, optimiser, schedule, data order, progress) and its loop."""

    def __init__(self, objective: Objective, cfg: RunConfig, device: torch.device, run_dir: Path, world: World):
        self.objective, self.model, self.cfg, self.device, self.run_dir = objective, objective.model, cfg, device, run_dir
        self.world = world
        data = objective.train_set
        tc = cfg.train
        self.order = torch.Generator().manual_seed(tc.seed)  # the data order (and data-loading worker seeds)
        self.batches = ShardedBatches(data.sampler(self.order), tc.batch_size, world)
        self.loader = DataLoader(data, batch_sampler=self.batches, collate_fn=data.collate,
                                 generator=self.order,  # its per-epoch worker-seed draw comes first, as it always did
                                 num_workers=0 if data.features is not None else tc.workers,  # cache: no decoding to spread
                                 worker_init_fn=ignore_interrupts)
        self.steps_per_epoch = -(-self.batches.batches() // tc.accumulate)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, tc), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = _scheduler(self.optimizer, tc.lr_schedule, tc.epochs * self.steps_per_epoch, tc.warmup_steps,
                                    self.steps_per_epoch, tc.lr_step_epochs, tc.lr_gamma)
        self.autocast = precision_context(tc.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
        self.net = _parallel(self.model, world, device)
        self.net = _CompiledOrEager(self.net) if tc.compile else self.net
        self.epoch_order = self.order.get_state()
        self.progress = Progress()
        self.logs = RunLogs(run_dir, tc.tensorboard, self.steps_per_epoch) if world.main else None

    def resume(self) -> None:
        """Continue from the run's resumable checkpoint (see :mod:`mmfuse.train.state`)."""
        self.progress, self.epoch_order = load_checkpoint(RunDir(self.run_dir).checkpoint, self.model, self.optimizer,
                                                          self.scheduler, self.scaler)
        if self.progress.done:
            raise MmfuseError(f"run {self.cfg.train.run!r} has finished (epoch {self.progress.epoch - 1} of "
                              f"{self.cfg.train.epochs}); there is nothing to resume")
        self.order.set_state(self.epoch_order)
        if self.logs:
            self.logs.resume(self.progress.step)

    def run(self, on_epoch: EpochHook | None) -> TrainResult:
        p, tc = self.progress, self.cfg.train
        metric = tc.select_metric
        with progress(disable=not self.world.main) as bar, _StopRequests() as stop:
            bar_task = bar.add_task("train", total=tc.epochs * self.steps_per_epoch, completed=p.step, info="")
            while p.epoch <= tc.epochs:
                record = self._epoch(bar, bar_task, stop)
                record["best"] = record[f"val_{metric}"] > p.best
                if record["best"]:
                    p.best_epoch, p.best, p.stale = p.epoch, record[f"val_{metric}"], 0
                else:
                    p.stale += 1
                p.history.append(record)
                p.next_epoch()
                early = bool(tc.patience) and p.stale >= tc.patience
                p.done = early or p.epoch > tc.epochs
                self.epoch_order = self.order.get_state()
                self._save_epoch(record)
                if on_epoch and self.world.main:
                    on_epoch(record)
                if early:
                    if self.world.main:
                        console().print(f"early stop: val {metric} has not improved for {tc.patience} epochs "
                                        f"(best {p.best:.4f} at epoch {p.best_epoch})", markup=False)
                    break
                if not p.done and self._stop_requested(stop):
                    raise Interrupted(f"training interrupted after epoch {record['epoch']}; continue with mmfuse "
                                      f"train --resume --run {tc.run}", stop.signal)
        if self.logs:
            self.logs.close()
        return TrainResult(self.run_dir, self.cfg, p.best_epoch, p.best, p.history)

    def _epoch(self, bar, bar_task, stop: _StopRequests) -> dict[str, Any]:
        p, tc = self.progress, self.cfg.train
        self.model.train(not self.objective.eval_mode_training)
        self.objective.start_epoch(p.epoch)
        self.order.set_state(self.epoch_order)  # this epoch's order, drawn again when resuming mid-epoch
        self.batches.start = p.batches_done
        start, group = time.perf_counter(), []
        for batch in self.loader:
            group.append(batch)
            p.batches_done += 1
            if len(group) < tc.accumulate and p.batches_done < self.batches.batches():
                continue
            self._step(group)
            group = []
            p.step += 1
            bar.update(bar_task, completed=p.step, info=f"epoch {p.epoch} loss {p.mean_loss:.3f}")
            if self._stop_requested(stop):
                p.seconds += time.perf_counter() - start
                self._save_checkpoint(self.epoch_order)
                raise Interrupted(f"training interrupted at epoch {p.epoch}, step {p.step}; the resumable "
                                  f"checkpoint is in {self.run_dir}: continue with mmfuse train --resume --run "
                                  f"{tc.run}", stop.signal)
            if tc.save_every and p.step % tc.save_every == 0:
                p.seconds += time.perf_counter() - start
                start = time.perf_counter()
                self._save_checkpoint(self.epoch_order)
        seconds = p.seconds + time.perf_counter() - start
        scores = self.objective.validate() if self.world.main else {}
        scores = self.world.share(scores)
        return {"epoch": p.epoch, "train_loss": p.mean_loss, "seconds": round(seconds, 3),
                "images_per_s": round(p.samples / max(seconds, 1e-9), 1),
                "lr": self.optimizer.param_groups[0]["lr"], **{f"val_{k}": v for k, v in scores.items()}}

    def _step(self, group: list[dict[str, torch.Tensor]]) -> None:
        """One optimiser step over the micro-batches of ``group`` (this rank's shares). The loss is
        the sum over every rank's micro-batches divided by their global count, so accumulation and
        data parallelism give the update of one big batch."""
        weights = [self.objective.loss_weight(b) for b in group]
        samples = sum(b["images"].size(0) for b in group)
        total, samples = self.world.sum([sum(weights), float(samples)], self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i, batch in enumerate(group):
            sync = i == len(group) - 1 or not self.world.distributed
            with (contextlib.nullcontext() if sync else self.net.no_sync()):
                with self.autocast:
                    loss = self.objective.loss(self.net, batch)
                loss_sum += float(loss.detach())
                self.scaler.scale(loss * (self.world.size / total)).backward()
        (loss_sum,) = self.world.sum([loss_sum], self.device)  # every rank sees the same: all stop together
        self._check_finite(loss_sum, "the loss")
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        p = self.progress
        p.loss_sum, p.loss_count, p.samples = p.loss_sum + loss_sum, p.loss_count + total, p.samples + int(samples)
        if self.logs:
            self.logs.step(p.step + 1, loss_sum / max(total, 1e-9), self.optimizer.param_groups[0]["lr"])

    def _check_finite(self, loss_sum: float | None, what: str) -> None:
        """Stop with one line at the first non-finite loss (before it changes the weights), or when
        the weights are no longer finite (before they are saved): nothing non-finite is ever written."""
        bad = not math.isfinite(loss_sum) if loss_sum is not None else \
            not all(bool(torch.isfinite(t).all()) for t in model_tensors(self.model).values() if t.is_floating_point())
        if not bad:
            return
        p, lr = self.progress, self.optimizer.param_groups[0]["lr"]
        value = f" ({loss_sum})" if loss_sum is not None else ""
        kept = "the run keeps its last checkpoint" if (RunDir(self.run_dir).checkpoint).exists() else "nothing was saved"
        raise MmfuseError(f"training stopped: {what} became non-finite{value} at epoch {p.epoch}, step "
                          f"{p.step + 1}, learning rate {lr:.3g}; {kept}. Lower --lr (or keep --grad-clip on) "
                          f"and train again")

    def _stop_requested(self, stop: _StopRequests) -> bool:
        if not self.world.distributed:
            return stop.requested
        return self.world.sum([float(stop.requested)], self.device)[0] > 0  # every rank stops at the same step

    def _save_checkpoint(self, epoch_order: torch.Tensor) -> None:
        self._check_finite(None, "the weights")
        if self.world.main:
            save_checkpoint(RunDir(self.run_dir).checkpoint, self.model, self.optimizer, self.scheduler, self.scaler,
                            epoch_order, self.progress)
        self.world.barrier()

    def _save_epoch(self, record: dict[str, Any]) -> None:
        """last (and best) weights, the history, and the resumable state: a finished run keeps none
        (there is nothing to resume), and best is a second name of last when it is the same epoch,
        so a run holds its weights once or twice, never three times."""
        self._check_finite(None, "the weights")
        files = RunDir(self.run_dir)
        if self.world.main:
            metric = self.cfg.train.select_metric
            meta = {"epoch": str(record["epoch"]), f"val_{metric}": str(record[f"val_{metric}"]),
                    "parameters": str(count_parameters(self.model))}
            if self.objective.labels is not None:  # the class order the output units mean, checked on load
                meta["labels"] = json.dumps(self.objective.labels)
            save_weights(files.weights("last"), self.model, meta)
            if record["best"]:
                link_or_copy(files.weights("last"), files.weights("best"))
        if not self.progress.done:
            self._save_checkpoint(self.epoch_order)
        if self.world.main:  # after the checkpoint, written whole from its history: the two always agree
            history = self.progress.history
            atomic_write_text(files.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
            if self.progress.done:
                files.checkpoint.unlink(missing_ok=True)
            self.logs.epoch(record, history, metric)
        self.world.barrier()


PART_RATES = (("encoder.", "lr_encoder"), ("fusion.", "lr_connector"))  # parameter prefix -> its rate's field


def param_groups(model: nn.Module, tc: Any) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one (every parameter, at --lr) unless a part has its own
    rate (--lr-encoder, --lr-connector, --lr-decoder: nanoVLM's per-part rates); then one group per
    part, of the parameters that train (the decoder's group: everything that is not the encoder or
    the fusion / connector: embeddings, decoder, LoRA adapters, language model)."""
    if not (tc.lr_encoder or tc.lr_connector or tc.lr_decoder):
        return [{"params": list(model.parameters()), "lr": tc.lr}]
    groups: dict[str, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            field = next((f for prefix, f in PART_RATES if name.startswith(prefix)), "lr_decoder")
            groups.setdefault(field, {"params": [], "lr": getattr(tc, field) or tc.lr})["params"].append(parameter)
    return list(groups.values())


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for ``--precision`` (a no-op for fp32); fp16 needs CUDA."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise MmfuseError("--precision fp16 needs a CUDA device (it uses a gradient scaler); on CPU use bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP around ``model`` when distributed (batch norm synchronised across GPUs; on CPU each
    process keeps its own batch statistics, as SyncBatchNorm needs GPUs)."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    trains_norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and
                       any(p.requires_grad for p in m.parameters()) for m in model.modules())
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif trains_norms and world.main:
        console().print("note: on CPU each process normalises its batch with its own batch-norm statistics "
                        "(SyncBatchNorm needs GPUs), so results differ slightly from one process", markup=False)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


class _CompiledOrEager:
    """Calls ``torch.compile(net)``; where compiling fails (no compiler, unsupported platform or
    op) it says why once and calls ``net`` from then on. Compilation happens at the first call."""

    def __init__(self, net: nn.Module):
        self.eager, self.compiled, self.failed = net, torch.compile(net), False

    def __call__(self, *args: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 (any backend failure means: run eagerly)
                self.failed = True
                console().print(f"torch.compile is not available here ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}); training eagerly", markup=False)
        return self.eager(*args)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.eager.no_sync()
