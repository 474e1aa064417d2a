"""Typed settings for data, models, training and decoding, with a validated JSON round-trip.

Override order everywhere: dataclass defaults < a JSON config file (``--config``) < command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mmfuse.errors import MmfuseError

CONFIG_FORMAT_VERSION = 1
CAPTION_METRICS = ("cider_d", "bleu4", "bleu3", "bleu2", "bleu1", "rouge_l")  # as in mmfuse.metrics.captions
CLASSIFY_METRICS = ("accuracy", "macro_f1")  # as in mmfuse.metrics.classification
SELECT_METRICS = ("auto",) + CAPTION_METRICS + CLASSIFY_METRICS
C = TypeVar("C")


@dataclass
class ShapesConfig:
    """Options of the built-in ``shapes`` source (``mmfuse prepare-data shapes``)."""

    train_images: int = 12000
    val_images: int = 250
    test_images: int = 500
    image_size: int = 64
    seed: int = 0

    def validate(self) -> None:
        check_values(self)
        for split in ("train", "val", "test"):
            count = getattr(self, f"{split}_images")
            if count < 1:
                raise MmfuseError(f"--{split}-images must be >= 1, got {count}")
        if not 32 <= self.image_size <= 1024:
            raise MmfuseError(f"--image-size must be between 32 and 1024, got {self.image_size}")


@dataclass
class ModelConfig:
    """Architecture of a captioner (image encoder -> fusion -> text decoder) or a classifier
    (image encoder + text encoder -> fusion -> label).

    Attributes:
        task: ``caption``, ``classify`` or ``auto`` (the data set's task).
        encoder: image encoder name (registry ``IMAGE_ENCODERS``).
        fusion: fusion strategy name (registry ``FUSIONS``).
        decoder: caption decoder name (registry ``DECODERS``), or ``auto`` (the Transformer for the
            transformer and prefix fusions, else the LSTM).
        text_encoder: classifier text encoder (registry ``TEXT_ENCODERS``), or ``auto`` (as for decoder).
        image_size: side of the square input images (0 = take the data set's).
        feature_dim: width of the image features (grid and global vector).
        embed_dim: word embedding width.
        hidden_dim: decoder / text encoder width (and the classifier head's).
        num_layers: stacked decoder / text encoder layers.
        dropout: dropout on embeddings and decoder outputs.
        grounding: classifier only: add word grounding (where each word's referent is in the image)
            beside every fusion but ``late``; off only to measure what it adds (config file).
        pretrained: torchvision encoders: start from torchvision's ImageNet weights (torch hub cache).
        weights: torchvision encoders: start from this local state dict instead.
        freeze_encoder: True (the backbone does not train), False (it fine-tunes), or None: frozen
            when weights are loaded, else trained.
        fine_tune_from: with ``freeze_encoder`` False, train the backbone from this top-level module on.
    """

    task: str = "auto"
    encoder: str = "small_cnn"
    fusion: str = "concat"
    decoder: str = "auto"
    text_encoder: str = "auto"
    image_size: int = 0
    feature_dim: int = 256
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    grounding: bool = True
    pretrained: bool = False
    weights: str = ""
    freeze_encoder: bool | None = None
    fine_tune_from: str = ""

    def validate(self) -> None:
        check_values(self)
        _positive(self, "feature_dim", "embed_dim", "hidden_dim", "num_layers")
        if self.image_size < 0:
            raise MmfuseError(f"image_size must be >= 0, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise MmfuseError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.task not in ("auto", "caption", "classify"):
            raise MmfuseError(f"task must be caption, classify or auto, got {self.task!r}")


@dataclass
class DecodeConfig:
    """How captions are generated (the options of Hugging Face ``generate`` that captioning uses).

    Attributes:
        beam_size: beams per image; 1 = greedy (or sampling with ``sample``).
        max_length: most words in a caption (a caption that reaches it ends there).
        min_length: fewest words before ``<eos>`` may be generated.
        length_penalty: GNMT's alpha: a caption's score is its log-probability divided by
            ``((5 + L) / 6) ** alpha`` (L: scored tokens, ``<eos>`` included); 0 = plain log-probability,
            > 0 favours longer captions, < 0 shorter ones.
        n_best: captions returned per image, best first (<= beam_size; with ``sample``, the draws).
        no_repeat_ngram: never generate an n-gram of this size twice in a caption (0 = off).
        diverse_groups: diverse beam search (Vijayakumar et al. 2018): beams split into this many
            groups; each group is penalised for the words earlier groups chose at the same step.
        diversity: the strength of that penalty (log-probability per repeated word).
        sample: draw words from the model's distribution instead of searching.
        temperature: divide the logits by this before sampling.
        top_k: sample among the k most likely words only (0 = all).
        top_p: sample among the most likely words whose probabilities sum to p (nucleus; 1 = all).
        seed: seed of the sampling; an image's captions depend only on it and the image's position.
        use_cache: Transformer decoders keep a key/value cache (off: re-run the prefix every step).
    """

    beam_size: int = 1
    max_length: int = 32
    min_length: int = 0
    length_penalty: float = 0.0
    n_best: int = 1
    no_repeat_ngram: int = 0
    diverse_groups: int = 1
    diversity: float = 0.5
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    use_cache: bool = True

    def validate(self) -> None:
        check_values(self)
        _positive(self, "beam_size", "max_length", "n_best", "diverse_groups")
        for name in ("min_length", "no_repeat_ngram", "top_k", "diversity"):
            if getattr(self, name) < 0:
                raise MmfuseError(f"{name} (--{name.replace('_', '-')}) must be >= 0, got {getattr(self, name)}")
        if self.min_length > self.max_length:
            raise MmfuseError(f"--min-length {self.min_length} is above --max-length {self.max_length}")
        if not self.temperature > 0:
            raise MmfuseError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MmfuseError(f"--top-p must be in (0, 1], got {self.top_p}")
        self._check_strategy()

    def check_reachable(self, vocab_size: int) -> None:
        """Refuse constraints no caption can meet with a vocabulary of ``vocab_size`` tokens (3 of
        them never generated: padding, start, end): with ``no_repeat_ngram`` n, a caption of L words
        holds L - n + 1 distinct n-grams, of which there are only W^n."""
        words = vocab_size - 3
        n = self.no_repeat_ngram
        if n and self.min_length - n + 1 > words ** min(n, 8):
            raise MmfuseError(f"--min-length {self.min_length} cannot be reached with --no-repeat-ngram {n}: the model "
                              f"knows {words} words, so no caption without a repeated {n}-gram is that long; lower "
                              f"--min-length or raise --no-repeat-ngram")

    def _check_strategy(self) -> None:
        shaping = [f"--{name.replace('_', '-')}" for name, default in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0))
                   if getattr(self, name) != default]
        if shaping and not self.sample:
            raise MmfuseError(f"{', '.join(shaping)} shape{'s' if len(shaping) == 1 else ''} sampling; add --sample "
                              f"(or leave {'it' if len(shaping) == 1 else 'them'} out for search)")
        if self.diversity != 0.5 and self.diverse_groups == 1:
            raise MmfuseError("--diversity applies to diverse beam search: add --diverse-groups G (G > 1)")
        if self.sample:
            if self.beam_size > 1 or self.diverse_groups > 1:
                raise MmfuseError("--sample draws each caption independently; it does not combine with --beam-size "
                                  "or --diverse-groups (use --n-best N for N draws per image)")
            return
        if self.n_best > self.beam_size:
            raise MmfuseError(f"--n-best {self.n_best} needs --beam-size >= {self.n_best} (or --sample for "
                              f"{self.n_best} draws per image)")
        if self.beam_size % self.diverse_groups:
            raise MmfuseError(f"--beam-size {self.beam_size} must be a multiple of --diverse-groups {self.diverse_groups}")

    @property
    def strategy(self) -> str:
        """``greedy``, ``beam``, ``diverse-beam`` or ``sample``."""
        if self.sample:
            return "sample"
        if self.beam_size == 1:
            return "greedy"
        return "diverse-beam" if self.diverse_groups > 1 else "beam"

    def describe(self) -> str:
        """The settings in words, e.g. ``beam search (5 beams), length penalty 0.6``."""
        text = {"greedy": "greedy",
                "beam": f"beam search ({self.beam_size} beams)",
                "diverse-beam": f"diverse beam search ({self.beam_size} beams in {self.diverse_groups} groups, "
                                f"diversity {self.diversity:g})",
                "sample": f"sampling (temperature {self.temperature:g}, top-k {self.top_k}, top-p {self.top_p:g}, "
                          f"seed {self.seed})"}[self.strategy]
        extras = [f"length penalty {self.length_penalty:g}" if self.length_penalty else "",
                  f"no repeated {self.no_repeat_ngram}-grams" if self.no_repeat_ngram else "",
                  f"min length {self.min_length}" if self.min_length else "",
                  f"{self.n_best}-best" if self.n_best > 1 else ""]
        return ", ".join([text] + [e for e in extras if e])

    def override(self, **changes: Any) -> "DecodeConfig":
        """A validated copy with the given settings replaced (``None`` keeps the current one)."""
        cfg = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        cfg.validate()
        return cfg


@dataclass
class TrainConfig:
    """One training run (teacher-forced cross-entropy, validation by generated captions).

    Attributes:
        data: workspace data set name.
        run: run name (empty = ``<data>-<fusion>-<timestamp>``).
        epochs: passes over the training images.
        batch_size: images per step (each brings up to ``captions_per_image`` captions).
        captions_per_image: references used per image per step (sampled when there are more).
        lr: AdamW peak learning rate.
        lr_schedule: ``cosine`` (decay to 0 over the run, per step), ``step`` (times ``lr_gamma``
            every ``lr_step_epochs`` epochs, as self-critical.pytorch) or ``constant``.
        warmup_steps: steps of linear warmup from ~0 to ``lr`` before the schedule (0 = none); the
            cosine then decays over the remaining steps (as Hugging Face's cosine-with-warmup).
        lr_step_epochs, lr_gamma: the ``step`` schedule's period (epochs) and factor.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm (0 = no clipping).
        seed: seed of every random number generator involved.
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda:N``).
        select_metric: validation metric that picks the best checkpoint: ``auto`` (CIDEr-D for captioning,
            accuracy for classification), ``cider_d``, ``bleu1``..``bleu4``, ``rouge_l``, ``accuracy``, ``macro_f1``.
        class_weights: classification loss weights: ``none`` or ``balanced`` (n / (C * count of the
            class) over the training labels, as scikit-learn's "balanced").
        encoder_from: name of a run in the workspace (captioner or classifier, with the same image
            encoder and feature width) whose best image-encoder weights start this model's encoder,
            which then trains with the rest (empty: random initialisation).
        overwrite: replace an existing run of the same name.
        workers: processes that read and decode training images (0: the training process itself).
        precision: ``fp32``, ``bf16`` (autocast, CPU or CUDA) or ``fp16`` (autocast with a gradient
            scaler, CUDA only).
        accumulate: micro-batches whose gradients are summed before each optimiser step (the
            effective batch is ``batch_size * accumulate``; the loss is averaged over all of it).
        label_smoothing: cross-entropy label smoothing (0 = none).
        patience: stop when the validation metric has not improved for this many epochs (0 = never).
        save_every: also write the resumable checkpoint every this many optimiser steps (0 = only
            after each epoch and on interruption).
        tensorboard: also write TensorBoard event files into the run (needs ``tensorboard``).
        compile: run the model through ``torch.compile`` (falls back, saying why, where unsupported).
        scst: self-critical sequence training from the run ``scst_from`` (captioning).
        scst_samples: captions sampled per image per SCST step (K).
        scst_baseline: ``mean`` (of the other K - 1 samples' rewards, the "new SCST") or ``greedy``
            (the greedy caption's reward, Rennie et al. 2017).
    """

    data: str = "shapes"
    run: str = ""
    epochs: int = 8
    batch_size: int = 32
    captions_per_image: int = 1
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    select_metric: str = "auto"
    class_weights: str = "none"
    encoder_from: str = ""
    overwrite: bool = False
    workers: int = 0
    lr_step_epochs: int = 3
    lr_gamma: float = 0.8
    precision: str = "fp32"
    accumulate: int = 1
    label_smoothing: float = 0.0
    patience: int = 0
    save_every: int = 0
    tensorboard: bool = False
    compile: bool = False
    scst: bool = False
    scst_from: str = ""
    scst_samples: int = 5
    scst_baseline: str = "mean"

    def validate(self) -> None:
        check_values(self)
        _positive(self, "epochs", "batch_size", "captions_per_image", "accumulate", "lr_step_epochs")
        if self.lr <= 0:
            raise MmfuseError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "warmup_steps", "workers", "patience", "save_every"):
            if getattr(self, name) < 0:
                raise MmfuseError(f"{name} (--{name.replace('_', '-')}) must be >= 0, got {getattr(self, name)}")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise MmfuseError(f"lr_schedule must be cosine, step or constant, got {self.lr_schedule!r}")
        if not 0 < self.lr_gamma <= 1:
            raise MmfuseError(f"lr_gamma (--lr-gamma) must be in (0, 1], got {self.lr_gamma}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise MmfuseError(f"precision (--precision) must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.label_smoothing < 1:
            raise MmfuseError(f"label_smoothing (--label-smoothing) must be in [0, 1), got {self.label_smoothing}")
        if self.scst and not self.scst_from:
            raise MmfuseError("--scst fine-tunes a trained captioner: name it with --from RUN")
        if self.scst_samples < 2 and self.scst_baseline == "mean":
            raise MmfuseError(f"--scst-samples must be >= 2 with the mean baseline, got {self.scst_samples}")
        if self.scst_samples < 1:
            raise MmfuseError(f"--scst-samples must be >= 1, got {self.scst_samples}")
        if self.scst_baseline not in ("mean", "greedy"):
            raise MmfuseError(f"--scst-baseline must be mean or greedy, got {self.scst_baseline!r}")
        if self.select_metric not in SELECT_METRICS:
            raise MmfuseError(f"select_metric must be one of {', '.join(SELECT_METRICS)}, got {self.select_metric!r}")
        if self.class_weights not in ("none", "balanced"):
            raise MmfuseError(f"class_weights must be none or balanced, got {self.class_weights!r}")

    def metric_for(self, task: str) -> str:
        """The selection metric for ``task``; a metric of the other task is a clear error."""
        if self.select_metric == "auto":
            return "cider_d" if task == "caption" else "accuracy"
        valid = CAPTION_METRICS if task == "caption" else CLASSIFY_METRICS
        if self.select_metric not in valid:
            raise MmfuseError(f"--select-metric {self.select_metric} does not apply to task {task}; use one of {', '.join(valid)}")
        return self.select_metric


@dataclass
class RunConfig:
    """Everything that defines a run; written as ``config.json`` beside its weights."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    format_version: int = CONFIG_FORMAT_VERSION

    def validate(self) -> None:
        if self.format_version > CONFIG_FORMAT_VERSION:
            raise MmfuseError(
                f"config format version {self.format_version} is newer than this mmfuse "
                f"understands ({CONFIG_FORMAT_VERSION}); upgrade mmfuse"
            )
        self.model.validate()
        self.train.validate()
        self.decode.validate()


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise MmfuseError(f"{name} (--{name.replace('_', '-')}) must be >= 1, got {value}")


MAX_SEED = 2**63 - 1  # what torch.manual_seed and NumPy's generators take
# The largest value of each size that makes sense on any machine: above it the request is a typo
# (torch would fail to allocate it, or overflow a 32-bit index, with a message of its own).
SIZE_LIMITS = {"feature_dim": 65536, "embed_dim": 65536, "hidden_dim": 65536, "num_layers": 256,
               "epochs": 1_000_000, "batch_size": 1_000_000, "captions_per_image": 10_000, "accumulate": 100_000,
               "beam_size": 1024, "max_length": 4096, "n_best": 1024, "diverse_groups": 1024,
               "no_repeat_ngram": 4096, "min_length": 4096, "top_k": 1_000_000, "scst_samples": 1024,
               "warmup_steps": 10**12, "lr_step_epochs": 1_000_000, "patience": 1_000_000, "save_every": 10**12,
               "workers": 1024, "image_size": 8192, "train_images": 100_000_000, "val_images": 100_000_000,
               "test_images": 100_000_000}


def check_values(cfg: Any) -> None:
    """Every float of ``cfg`` finite, every seed in [0, 2^63), every size within :data:`SIZE_LIMITS`:
    one clear error naming the setting (and its flag) otherwise."""
    for item in dataclasses.fields(cfg):
        value = getattr(cfg, item.name)
        flag = f"{item.name} (--{item.name.replace('_', '-')})"
        if isinstance(value, float) and not math.isfinite(value):
            raise MmfuseError(f"{flag} must be a finite number, got {value}")
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if item.name == "seed" and not 0 <= value <= MAX_SEED:
            raise MmfuseError(f"{flag} must be between 0 and {MAX_SEED}, got {value}")
        limit = SIZE_LIMITS.get(item.name)
        if limit is not None and value > limit:
            raise MmfuseError(f"{flag} must be at most {limit}, got {value}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain JSON-ready dict of a config dataclass (nested ones included)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: Any, where: str = "config") -> C:
    """Build ``cls`` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise MmfuseError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise MmfuseError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    values = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    expected = _plain_types(hint)
    if isinstance(value, bool) and bool not in expected:
        raise MmfuseError(f"{where}: expected {_names(expected)}, got a boolean")
    if isinstance(value, int) and float in expected and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected):
        raise MmfuseError(f"{where}: expected {_names(expected)}, got {type(value).__name__}")
    return value


def _plain_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for t in typing.get_args(hint))
    return (hint,)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in kinds)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a ``--config`` JSON file into a dict of sections (validated when merged)."""
    from mmfuse.workspace import read_json

    data = read_json(path, "config file")
    if not isinstance(data, dict):
        raise MmfuseError(f"config file {path}: expected a JSON object")
    return data


def merge(cfg: C, overrides: dict[str, Any], where: str) -> C:
    """A copy of ``cfg`` with ``overrides`` applied (validated like :func:`from_dict`)."""
    merged = {**to_dict(cfg), **overrides}
    return from_dict(type(cfg), merged, where)
