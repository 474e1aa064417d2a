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
ANSWER_METRICS = ("vqa_accuracy", "exact_match")  # as in mmfuse.metrics.vqa
TASK_METRICS = {"caption": CAPTION_METRICS, "classify": CLASSIFY_METRICS, "answer": ANSWER_METRICS}  # first: auto
SELECT_METRICS = ("auto",) + CAPTION_METRICS + CLASSIFY_METRICS + ANSWER_METRICS
C = TypeVar("C")
DECODING = "Decoding"  # help sections
SCST = "Self-critical training"
LLM = "Language models and connectors"


def setting(default: Any, help: str, *, flag: str | None = "", panel: str = "", choices: str = "",
            names: str = "") -> Any:
    """A config field with its command-line option declared beside it: ``help`` is the option's help
    (and the field's documentation); ``flag`` the option's name(s) when not ``--field-name`` (``None``:
    config file only); ``panel`` the help section; ``choices`` the registry whose names it takes;
    ``names`` the workspace's ``runs`` or ``datasets`` when it names one (offered by shell completion)."""
    return field(default=default, metadata={"help": help, "flag": flag, "panel": panel, "choices": choices,
                                            "names": names})



@dataclass
class ShapesConfig:
    """Options of the built-in ``shapes`` and ``shapes-qa`` sources (``mmfuse prepare-data shapes``)."""

    train_images: int = setting(12000, "shapes: training images to generate.", panel="Built-in sets")
    val_images: int = setting(250, "shapes: validation images to generate.", panel="Built-in sets")
    test_images: int = setting(500, "shapes: test images to generate.", panel="Built-in sets")
    image_size: int = setting(64, "shapes: image side in pixels.", panel="Built-in sets")
    seed: int = setting(0, "shapes: random seed (same seed, same bytes); real data: seed of the split by ratio.")

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
    (image encoder + text encoder -> fusion -> label). Each field's help is its documentation."""

    task: str = setting("auto", "caption, classify, answer, or auto (the data set's task).")
    encoder: str = setting("small_cnn", "Image encoder, or a pretrained tower: hf:<model id or directory> (CLIP, "
                                        "SigLIP, DINOv2, ViT) or timm:<name>.", choices="encoder")
    fusion: str = setting("concat", "Fusion strategy.", choices="fusion")
    decoder: str = setting("auto", "Caption decoder (auto: transformer for the transformer and prefix fusions, else "
                                   "lstm), or a pretrained causal language model: hf:<model id or directory>.",
                           choices="decoder")
    text_encoder: str = setting("auto", "Classifier text encoder (auto: gru for the transformer and prefix fusions, "
                                        "else lstm).", choices="text_encoder")
    image_size: int = setting(0, "Side of the square input images (0: the data set's; torchvision encoders in "
                                 "cache-features: 224).")
    feature_dim: int = setting(256, "Image feature width (grid and global vector).")
    embed_dim: int = setting(128, "Word embedding width.")
    hidden_dim: int = setting(256, "Decoder / text encoder hidden width (and the classifier head's).")
    num_layers: int = setting(1, "Stacked decoder / text encoder layers.", flag=None)
    dropout: float = setting(0.1, "Dropout probability in the model.")
    grounding: bool = setting(True, "Classifier: word grounding beside every fusion but late (off only to "
                                    "measure what it adds).", flag=None)
    pretrained: bool = setting(False, "torchvision encoders: start from torchvision's ImageNet weights, read from "
                                      "the torch hub cache (never downloaded).")
    weights: str = setting("", "torchvision encoders: start from this local state dict (.pth or .safetensors).")
    freeze_encoder: bool | None = setting(None, "torchvision encoders: keep the backbone fixed, or train it "
                                                "(default: frozen with --pretrained/--weights, else trained).",
                                          flag="--freeze/--fine-tune")
    fine_tune_from: str = setting("", "With --fine-tune: train the backbone from this top-level module on "
                                      "(e.g. layer4).")
    vision_layer: int = setting(-2, "hf: encoders: the hidden state whose patch tokens are the grid (-1: last, -2: "
                                    "the penultimate, as LLaVA).", panel=LLM)
    prompt: str = setting("", "hf: decoders: text the language model reads after the image, before the caption "
                              "(e.g. 'A photo of'); the loss covers the caption only.", panel=LLM)
    lora: int = setting(0, "hf: decoders: train LoRA adapters of this rank on the language model's attention and "
                           "MLP projections (0: none; the model stays frozen).", panel=LLM)
    lora_alpha: float = setting(16.0, "hf: decoders: LoRA alpha (the adapters' scale is alpha / rank).", panel=LLM)
    lora_targets: str = setting("all-linear", "hf: decoders: the modules LoRA adapts: all-linear (attention and "
                                              "MLP projections) or comma-separated module names.", panel=LLM)
    finetune_lm: bool = setting(False, "hf: decoders: train the whole language model (default: frozen).",
                                flag="--finetune-lm", panel=LLM)
    frozen_dtype: str = setting("fp32", "hf: decoders: hold a frozen language model's weights in fp32 or bf16 "
                                        "(half the memory).", panel=LLM)
    gradient_checkpointing: bool = setting(False, "hf: decoders: recompute the language model's activations in "
                                                  "the backward pass (less memory, slower steps).",
                                           flag="--gradient-checkpointing", panel=LLM)
    image_tokens: int = setting(32, "resampler, qformer, xattn: learned queries (image tokens the language model "
                                    "reads).", panel=LLM)
    connector_layers: int = setting(2, "resampler, qformer, xattn: layers of the connector.", panel=LLM)
    shuffle: int = setting(2, "pixel-shuffle: fold s x s grid cells into one token.", panel=LLM)
    xattn_every: int = setting(1, "xattn: a gated cross-attention block before every k-th language-model block.",
                               panel=LLM)
    xattn_scaled: bool = setting(True, "xattn: each gated update scaled by the RMS of the hidden state it joins "
                                       "(off in runs written before mmfuse did this: they keep Flamingo's block).",
                                 flag=None)
    decoder_revision: str = setting("", "hf: decoders: the revision of the language model the run was trained on "
                                        "(recorded by train).", flag=None)
    decoder_config_sha256: str = setting("", "hf: decoders: sha256 of that model's config.json (recorded by train).",
                                         flag=None)

    def validate(self) -> None:
        check_values(self)
        _positive(self, "feature_dim", "embed_dim", "hidden_dim", "num_layers")
        if self.image_size < 0:
            raise MmfuseError(f"image_size must be >= 0, got {self.image_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise MmfuseError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.task not in ("auto", *TASK_METRICS):
            raise MmfuseError(f"task must be caption, classify, answer or auto, got {self.task!r}")
        _positive(self, "image_tokens", "connector_layers", "shuffle", "xattn_every")
        if self.lora < 0 or not self.lora_alpha > 0:
            raise MmfuseError(f"--lora must be >= 0 and --lora-alpha > 0, got {self.lora} and {self.lora_alpha}")
        if self.lora and self.finetune_lm:
            raise MmfuseError("--lora trains adapters on a frozen language model; --finetune-lm trains all of it: "
                              "choose one")
        if self.frozen_dtype not in ("fp32", "bf16"):
            raise MmfuseError(f"--frozen-dtype must be fp32 or bf16, got {self.frozen_dtype!r}")


@dataclass
class DecodeConfig:
    """How captions are generated (the options of Hugging Face ``generate`` that captioning uses).
    Each field's help is its documentation; diverse beam search is Vijayakumar et al. 2018."""

    beam_size: int = setting(1, "Beams per image (1 = greedy).", panel=DECODING)
    max_length: int = setting(32, "Most words in a caption (a caption that reaches it ends there).", panel=DECODING)
    min_length: int = setting(0, "Fewest words before the caption may end.", panel=DECODING)
    length_penalty: float = setting(0.0, "GNMT length penalty alpha: score = log-prob / ((5 + L) / 6)^alpha, L "
                                         "counting <eos>; > 0 favours longer captions.", panel=DECODING)
    n_best: int = setting(1, "Captions per image, best first (<= --beam-size; with --sample, the draws).",
                          panel=DECODING)
    no_repeat_ngram: int = setting(0, "Never repeat an n-gram of this size within a caption (0 = off).",
                                   panel=DECODING)
    diverse_groups: int = setting(1, "Diverse beam search: split the beams into this many groups.", panel=DECODING)
    diversity: float = setting(0.5, "Diverse beam search: penalty per word an earlier group chose at the same "
                                    "step.", panel=DECODING)
    sample: bool = setting(False, "Sample words instead of searching.", panel=DECODING)
    temperature: float = setting(1.0, "Sampling: divide the logits by this.", panel=DECODING)
    top_k: int = setting(0, "Sampling: only among the k most likely words (0 = all).", panel=DECODING)
    top_p: float = setting(1.0, "Sampling: only among the most likely words whose probability reaches p.",
                           panel=DECODING)
    seed: int = setting(0, "Sampling seed; an image's draws depend only on it and the image's position among "
                           "those captioned.", panel=DECODING)
    use_cache: bool = setting(True, "Transformer decoders: key/value cache (--no-cache re-runs the sequence each "
                                    "step).", flag="--cache/--no-cache", panel=DECODING)

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
    """One training run (teacher-forced cross-entropy, or SCST; validation by generated captions).
    Each field's help is its documentation."""

    data: str = setting("shapes", "Workspace data set to train on.", names="datasets")
    run: str = setting("", "Run name (default: <data>-<fusion>-<timestamp>).")
    epochs: int = setting(8, "Passes over the training data.")
    batch_size: int = setting(32, "Samples per step (captioning: images, each with up to --captions-per-image "
                                  "captions).")
    captions_per_image: int = setting(1, "Captioning: reference captions used per image per step (sampled when "
                                         "there are more).")
    lr: float = setting(2e-3, "AdamW peak learning rate.")
    lr_schedule: str = setting("cosine", "Learning-rate schedule: cosine (decay to 0, per step), step (times "
                                         "--lr-gamma every --lr-step-epochs epochs, as self-critical.pytorch) or "
                                         "constant.")
    warmup_steps: int = setting(0, "Steps of linear learning-rate warmup before the schedule (0: none); the "
                                   "cosine then decays over the remaining steps.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    grad_clip: float = setting(5.0, "Clip the gradient norm to this (0: no clipping).")
    seed: int = setting(0, "Random seed (weights init, data order).")
    device: str = setting("auto", "Device: auto (CUDA if available), cpu, cuda or cuda:N.")
    select_metric: str = setting("auto", "Validation metric that picks the best checkpoint: auto (cider_d / "
                                         "accuracy / vqa_accuracy), cider_d, bleu1..bleu4, rouge_l, accuracy, "
                                         "macro_f1, vqa_accuracy or exact_match.")
    class_weights: str = setting("none", "Classification: none, or balanced (weights n / (C * class count), as "
                                         "scikit-learn's).")
    encoder_from: str = setting("", "Run (captioner or classifier, same --encoder and --feature-dim) whose best "
                                    "image-encoder weights start this model's encoder; it then trains with the rest.",
                                names="runs")
    overwrite: bool = setting(False, "Replace an existing run of the same name.", flag="--overwrite")
    workers: int = setting(0, "Processes that read and decode training images (0: the training process).")
    lr_step_epochs: int = setting(3, "The step schedule's period in epochs.")
    lr_gamma: float = setting(0.8, "The step schedule's factor.")
    precision: str = setting("fp32", "fp32, bf16 (autocast; CPU or CUDA) or fp16 (autocast + gradient scaler; "
                                     "CUDA only).")
    accumulate: int = setting(1, "Micro-batches per optimiser step (gradient accumulation; effective batch = "
                                 "batch size x this).")
    label_smoothing: float = setting(0.0, "Cross-entropy label smoothing (0: none).")
    patience: int = setting(0, "Early stopping: stop after this many epochs without a better validation metric "
                               "(0: never).")
    save_every: int = setting(0, "Also save the resumable checkpoint every N optimiser steps (0: after each epoch "
                                 "and on Ctrl-C only).")
    tensorboard: bool = setting(False, "Also write TensorBoard event files into the run (needs the tensorboard "
                                       "package).", flag="--tensorboard")
    compile: bool = setting(False, "Run the model through torch.compile (falls back to eager, saying why, where "
                                   "unsupported).", flag="--compile")
    scst: bool = setting(False, "Self-critical sequence training: fine-tune the captioner --from RUN with a "
                                "CIDEr-D reward.", flag="--scst", panel=SCST)
    scst_from: str = setting("", "With --scst: the trained captioner (run name) to start from.", flag="--from",
                             panel=SCST, names="runs")
    lr_connector: float = setting(0.0, "Learning rate of the fusion / connector (0: --lr), as nanoVLM's per-part "
                                       "rates.", panel=LLM)
    lr_encoder: float = setting(0.0, "Learning rate of the image encoder (0: --lr).", panel=LLM)
    lr_decoder: float = setting(0.0, "Learning rate of the decoder, LoRA adapters or language model (0: --lr).",
                                panel=LLM)
    download: bool = setting(False, "Let train fetch an hf: decoder missing from the local Hugging Face cache (the "
                                    "only network access mmfuse makes; default: offline).", flag="--download",
                             panel=LLM)
    scst_samples: int = setting(5, "With --scst: captions sampled per image per step.", panel=SCST)
    scst_baseline: str = setting("mean", "With --scst: mean (of the other samples' rewards, the 'new SCST') or "
                                         "greedy (the greedy caption's reward, Rennie et al. 2017).", panel=SCST)

    def validate(self) -> None:
        check_values(self)
        _positive(self, "epochs", "batch_size", "captions_per_image", "accumulate", "lr_step_epochs")
        if self.lr <= 0:
            raise MmfuseError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip", "warmup_steps", "workers", "patience", "save_every", "lr_connector",
                     "lr_encoder", "lr_decoder"):
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
        valid = TASK_METRICS[task]
        if self.select_metric == "auto":
            return valid[0]
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
               "test_images": 100_000_000, "image_tokens": 4096,
               "connector_layers": 256, "shuffle": 64, "xattn_every": 256, "lora": 65536}


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


# Fields added after runs were first written, with the value that keeps an older run computing what it
# was trained to compute when its config.json lacks them (today's default would change it silently).
ABSENT_IN_OLDER_RUNS = {"model": {"xattn_scaled": False}}


def read_run_config(run_dir: Path) -> RunConfig:
    """The config a run was trained with (its ``config.json``), checked against today's fields."""
    from mmfuse.workspace import RunDir, read_json

    data = read_json(RunDir(run_dir).config, "run config")
    for section, absent in ABSENT_IN_OLDER_RUNS.items():
        if isinstance(data, dict) and isinstance(data.get(section), dict):
            data[section] = {**absent, **data[section]}
    return from_dict(RunConfig, data, "run config")


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a ``--config`` JSON file into a dict of sections (validated when merged)."""
    from mmfuse.workspace import read_json

    data = read_json(path, "config file")
    if not isinstance(data, dict):
        raise MmfuseError(f"config file {path}: expected a JSON object")
    return data

