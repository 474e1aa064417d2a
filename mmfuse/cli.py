"""The ``mmfuse`` command line. Each command parses options, builds a typed config and calls ONE
core function. Heavy libraries (torch, spaCy) are imported inside commands, so ``--help`` is fast.

Errors: an :class:`~mmfuse.errors.MmfuseError`, a usage error or a file-system error (``OSError``:
disk full, read-only, ...) becomes one line on stderr and a non-zero exit; anything else is
reported as an internal error (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # Typer >= 0.20 vendors click as typer._click; older Typer uses the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from mmfuse import __version__
from mmfuse.config import DecodeConfig, ModelConfig, RunConfig, ShapesConfig, TrainConfig, from_dict
from mmfuse.errors import Interrupted, MmfuseError, Terminated, describe_os_error
from mmfuse.workspace import json_path, printable

_DEBUG = {"on": False}  # set per invocation by --debug or $MMFUSE_DEBUG


def _fail(message: str, code: int) -> None:
    typer.echo(f"mmfuse: error: {message}", err=True)
    sys.exit(code)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """A library's warning as one ``mmfuse: warning:`` line on stderr (the source line and the
    warning's file are for --debug)."""
    if _DEBUG["on"]:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    text = " ".join(str(message).split())
    sys.stderr.write(f"mmfuse: warning: {text[:300]}\n")


class MmfuseGroup(TyperGroup):
    """Turns every expected failure into one clear stderr line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        _DEBUG["on"] = bool(os.environ.get("MMFUSE_DEBUG"))
        warnings.showwarning = _one_line_warning
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        try:
            rv = super().main(args, prog_name or "mmfuse", complete_var, standalone_mode=False, **extra)
        except click_errors.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
                text = exc.ctx.get_help()  # rich help prints itself and returns ""
                if text:
                    typer.echo(text)
                sys.exit(2)
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            _fail(f"{exc.format_message()}{where}", exc.exit_code)
        except click_errors.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except MmfuseError as exc:
            if _DEBUG["on"]:
                raise
            _fail(str(exc), exc.exit_code)
        except OSError as exc:  # the file system refused (disk full, read-only, no permission, ...)
            if _DEBUG["on"]:
                raise
            _fail(describe_os_error(exc), 1)
        except Exception as exc:  # a bug: say so in one line unless debugging
            if _DEBUG["on"]:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        """Run the command; Ctrl-C or SIGTERM that the command did not report itself (with what it
        kept and how to go on) becomes one line here, before click's own handling prints anything."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            command = ctx.invoked_subcommand or "mmfuse"
            raise Interrupted(f"{command} interrupted; nothing was left half-written", exc) from None


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


app = typer.Typer(
    cls=MmfuseGroup,
    name="mmfuse",
    help="Multimodal (image + text) fusion: prepare data, train, evaluate and caption.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


_REGISTRY_OPTIONS = {"fusion": "fusion", "fusions": "fusion", "encoder": "encoder", "decoder": "decoder",
                     "text_encoder": "text_encoder"}


def _registry_names(kind: str) -> list[str]:
    from mmfuse.models.decoders import DECODERS
    from mmfuse.models.encoders import IMAGE_ENCODERS
    from mmfuse.models.fusion import FUSIONS
    from mmfuse.models.text_encoders import TEXT_ENCODERS

    registry = {"fusion": FUSIONS, "encoder": IMAGE_ENCODERS, "decoder": DECODERS, "text_encoder": TEXT_ENCODERS}[kind]
    return registry.names() + (["auto"] if kind in ("decoder", "text_encoder") else [])


class RegistryHelpCommand(TyperCommand):
    """Lists registry choices in the option help, importing the registries (and torch) only for --help.

    The names come from the registries themselves, never from a second list; values are checked by
    the registry in the core, whose error lists the valid names.
    """

    def format_help(self, ctx, formatter) -> None:  # type: ignore[no-untyped-def]
        for param in self.params:
            kind = _REGISTRY_OPTIONS.get(param.name or "")
            if kind and param.help and "Choices:" not in param.help:
                param.help = f"{param.help} Choices: {', '.join(_registry_names(kind))}."
        super().format_help(ctx, formatter)


def _explicit(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """The subset of ``values`` the user actually gave (command line or environment)."""
    given = ("COMMANDLINE", "ENVIRONMENT")
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", None) in given}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mmfuse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Multimodal (image + text) fusion: prepare data, train, evaluate and caption.

    Every artifact lives in one workspace: --workspace, else $MMFUSE_WORKSPACE, else ./workspace.
    """
    _DEBUG["on"] = _DEBUG["on"] or debug


Workspace_ = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Workspace directory (default: $MMFUSE_WORKSPACE, else ./workspace).",
                 show_default=False),
]
Device_ = Annotated[str, typer.Option(help="Device: auto (CUDA if available), cpu, cuda or cuda:N.")]
# Decoding options of evaluate and caption (None: the run's setting; see DecodeConfig).
BeamSize_ = Annotated[Optional[int], typer.Option(help="Beams per image (1 = greedy) (default: the run's, 1).", show_default=False, rich_help_panel="Decoding")]
MaxLength_ = Annotated[Optional[int], typer.Option(help="Most words in a caption (default: the run's).", show_default=False, rich_help_panel="Decoding")]
MinLength_ = Annotated[Optional[int], typer.Option(help="Fewest words before the caption may end (default: 0).", show_default=False, rich_help_panel="Decoding")]
LengthPenalty_ = Annotated[Optional[float], typer.Option(help="GNMT length penalty alpha: score = log-prob / ((5 + L) / 6)^alpha; > 0 favours longer captions (default: 0).", show_default=False, rich_help_panel="Decoding")]
NBest_ = Annotated[Optional[int], typer.Option(help="Captions per image, best first (<= --beam-size; with --sample, the draws) (default: 1).", show_default=False, rich_help_panel="Decoding")]
NoRepeat_ = Annotated[Optional[int], typer.Option("--no-repeat-ngram", help="Never repeat an n-gram of this size within a caption (0 = off) (default: 0).", show_default=False, rich_help_panel="Decoding")]
Groups_ = Annotated[Optional[int], typer.Option(help="Diverse beam search: split the beams into this many groups (default: 1).", show_default=False, rich_help_panel="Decoding")]
Diversity_ = Annotated[Optional[float], typer.Option(help="Diverse beam search: penalty per word an earlier group chose at the same step (default: 0.5).", show_default=False, rich_help_panel="Decoding")]
Sample_ = Annotated[Optional[bool], typer.Option("--sample/--no-sample", help="Sample words instead of searching (default: off).", show_default=False, rich_help_panel="Decoding")]
Temperature_ = Annotated[Optional[float], typer.Option(help="Sampling: divide the logits by this (default: 1).", show_default=False, rich_help_panel="Decoding")]
TopK_ = Annotated[Optional[int], typer.Option(help="Sampling: only among the k most likely words (0 = all) (default: 0).", show_default=False, rich_help_panel="Decoding")]
TopP_ = Annotated[Optional[float], typer.Option(help="Sampling: only among the most likely words whose probability reaches p (default: 1).", show_default=False, rich_help_panel="Decoding")]
Seed_ = Annotated[Optional[int], typer.Option(help="Sampling seed; an image's draws depend only on it and the image's position among those captioned (default: 0).", show_default=False, rich_help_panel="Decoding")]
Cache_ = Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Transformer decoders: key/value cache (--no-cache re-runs the sequence each step) (default: on).", show_default=False, rich_help_panel="Decoding")]


def _decode_options(beam_size, max_length, min_length, length_penalty, n_best, no_repeat_ngram, diverse_groups,
                    diversity, sample, temperature, top_k, top_p, seed, cache) -> dict[str, Any]:
    """The DecodeConfig fields given on the command line (None: keep the run's)."""
    return {"beam_size": beam_size, "max_length": max_length, "min_length": min_length,
            "length_penalty": length_penalty, "n_best": n_best, "no_repeat_ngram": no_repeat_ngram,
            "diverse_groups": diverse_groups, "diversity": diversity, "sample": sample, "temperature": temperature,
            "top_k": top_k, "top_p": top_p, "seed": seed, "use_cache": cache}


_SHAPES = ShapesConfig()
_TRAIN = TrainConfig()
_MODEL = ModelConfig()
_DECODE = DecodeConfig()


@app.command("prepare-data")
def prepare_data_cmd(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Data source: shapes, shapes-qa (built-in synthetic sets), coco, karpathy, flickr8k or folder.")],
    name: Annotated[Optional[str], typer.Option(help="Data set name in the workspace (default: the source name).", show_default=False)] = None,
    images: Annotated[Optional[str], typer.Option(help="coco, karpathy, flickr8k, folder: the image directory.", show_default=False, rich_help_panel="Real data")] = None,
    annotations: Annotated[Optional[list[str]], typer.Option(help="coco: a captions_*.json file (repeat for several; names with 'train' give the training split).", show_default=False, rich_help_panel="Real data")] = None,
    json_file: Annotated[Optional[str], typer.Option("--json", help="karpathy: dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json.", show_default=False, rich_help_panel="Real data")] = None,
    captions: Annotated[Optional[str], typer.Option(help="flickr8k: Flickr8k.token.txt; folder: a CSV (image,caption or image,text,label) or JSONL file.", show_default=False, rich_help_panel="Real data")] = None,
    splits_dir: Annotated[Optional[str], typer.Option(help="flickr8k: the directory of Flickr_8k.{train,dev,test}Images.txt.", show_default=False, rich_help_panel="Real data")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(help="coco (no training file), flickr8k (no --splits-dir), folder (no split column): fraction of images for val (default: 0.05).", show_default=False, rich_help_panel="Real data")] = None,
    test_ratio: Annotated[Optional[float], typer.Option(help="The same for test (default: 0.05).", show_default=False, rich_help_panel="Real data")] = None,
    train_images: Annotated[int, typer.Option(help="shapes: training images to generate.", rich_help_panel="Built-in sets")] = _SHAPES.train_images,
    val_images: Annotated[int, typer.Option(help="shapes: validation images to generate.", rich_help_panel="Built-in sets")] = _SHAPES.val_images,
    test_images: Annotated[int, typer.Option(help="shapes: test images to generate.", rich_help_panel="Built-in sets")] = _SHAPES.test_images,
    image_size: Annotated[int, typer.Option(help="shapes: image side in pixels.", rich_help_panel="Built-in sets")] = _SHAPES.image_size,
    seed: Annotated[int, typer.Option(help="shapes: random seed (same seed, same bytes); real data: seed of the split by ratio.")] = _SHAPES.seed,
    min_count: Annotated[int, typer.Option(help="Keep words seen at least this often in training captions.")] = 1,
    max_length: Annotated[int, typer.Option(help="Cut tokenized captions to this many tokens (0: keep them whole).")] = 0,
    workspace: Workspace_ = None,
) -> None:
    """Turn a data source into a workspace data set (images, tokenized captions, vocabulary).

    Images of real data sets are checked once (missing, truncated or non-image files are skipped and
    listed in the data set's report.json) and used where they are.

    Examples: mmfuse prepare-data shapes --train-images 12000 --seed 0;
    mmfuse prepare-data karpathy --json dataset_coco.json --images coco/ --name coco-k --min-count 5;
    mmfuse prepare-data folder --images photos/ --captions captions.csv --name mine
    """
    from rich.markup import escape

    from mmfuse.data.prepare import prepare_data
    from mmfuse.ui import LazyProgress, console
    from mmfuse.workspace import Workspace

    options = _explicit(ctx, train_images=train_images, val_images=val_images, test_images=test_images,
                        image_size=image_size, seed=seed, images=images, annotations=annotations, json_file=json_file,
                        captions=captions, splits_dir=splits_dir, val_ratio=val_ratio, test_ratio=test_ratio)
    if "json_file" in options:  # the flag is --json, as the karpathy source calls it
        options["json"] = options.pop("json_file")
    with LazyProgress() as bar:
        result = prepare_data(Workspace.open(workspace), source, options, name, min_count,
                              lambda stage, done, total: bar.update(stage if stage == "checking images" else "tokenizing", done, total), max_length)
    m = result.manifest
    counts = ", ".join(f"{s} {c['images']} images / {c['captions'] or c['samples']} {'captions' if m['task'] == 'caption' else 'samples'}" for s, c in m["splits"].items())
    console().print(f"data set [bold]{m['name']}[/] at {escape(str(result.path))}: {counts}; vocabulary {m['vocab_size']} words")
    stats = m["stats"]
    lengths = stats["caption_length"]
    coverage = ", ".join(f"{s} {100 * v:.1f} %" for s, v in stats["vocab_coverage"].items())
    console().print(f"vocabulary coverage of the tokens: {coverage}"
                    + (f"; caption length in tokens (train): median {lengths['p50']}, 90th percentile {lengths['p90']}, "
                       f"99th {lengths['p99']}, max {lengths['max']}" if m["task"] == "caption" else "")
                    + (f"; {stats['captions_cut']} captions cut to {stats['max_length']} tokens" if stats["max_length"] else ""),
                    markup=False)
    if stats["skipped_samples"]:
        console().print(f"skipped {stats['skipped_samples']} sample(s) whose image is missing or unreadable or that have "
                        f"no caption: listed in {result.path / 'report.json'}", markup=False)


@app.command("cache-features", cls=RegistryHelpCommand)
def cache_features_cmd(
    data: Annotated[str, typer.Option(help="Workspace data set whose images to encode.")],
    encoder: Annotated[str, typer.Option(help="torchvision image encoder (resnet50, ...).")],
    pretrained: Annotated[bool, typer.Option(help="Use torchvision's ImageNet weights (from the torch hub cache).")] = False,
    weights: Annotated[str, typer.Option(help="Use this local state dict instead.", show_default=False)] = "",
    image_size: Annotated[int, typer.Option(help="Side the images are resized to (0: the data set's, else 224).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: Annotated[int, typer.Option(help="Processes that read and decode images.")] = 2,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Run a frozen torchvision encoder once over every image of a data set and store its outputs
    (fp16, memory-mapped) in the data set; `train` with the same frozen encoder then reads them.
    An interrupted run resumes where it stopped.

    Example: mmfuse cache-features --data coco --encoder resnet50 --pretrained
    """
    from mmfuse.data.features import cache_dataset_features
    from mmfuse.ui import LazyProgress, console
    from mmfuse.workspace import Workspace

    if batch_size < 1 or workers < 0:
        raise MmfuseError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    cfg = ModelConfig(encoder=encoder, pretrained=pretrained, weights=weights, image_size=image_size)
    with LazyProgress() as bar:
        result = cache_dataset_features(Workspace.open(workspace), data, cfg, batch_size, workers, device,
                                        lambda done, total: bar.update("encoding images", done, total))
    console().print(f"features of {result.images} images in {result.path}: {result.bytes / 2**20:.1f} MiB, "
                    f"{result.bytes / result.images / 1024:.1f} KiB per image; {result.new} encoded now "
                    f"({result.images - result.new} were already there)", markup=False)


_MODEL_HELP = {
    "task": "caption, classify, or auto (the data set's task).",
    "fusion": "Fusion strategy.",
    "encoder": "Image encoder.",
    "decoder": "Caption decoder (auto: transformer for the transformer and prefix fusions, else lstm).",
    "text_encoder": "Classifier text encoder (auto: gru for the transformer and prefix fusions, else lstm).",
}


_ENCODER_FROM_HELP = ("Run (captioner or classifier, same --encoder and --feature-dim) whose best image-encoder "
                      "weights start this model's encoder; it then trains with the rest.")


@app.command("train", cls=RegistryHelpCommand)
def train_cmd(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Workspace data set to train on.")] = _TRAIN.data,
    task: Annotated[str, typer.Option(help=_MODEL_HELP["task"])] = _MODEL.task,
    fusion: Annotated[str, typer.Option(help=_MODEL_HELP["fusion"])] = _MODEL.fusion,
    encoder: Annotated[str, typer.Option(help=_MODEL_HELP["encoder"])] = _MODEL.encoder,
    decoder: Annotated[str, typer.Option(help=_MODEL_HELP["decoder"])] = _MODEL.decoder,
    text_encoder: Annotated[str, typer.Option(help=_MODEL_HELP["text_encoder"])] = _MODEL.text_encoder,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = _TRAIN.epochs,
    batch_size: Annotated[int, typer.Option(help="Samples per step (captioning: images, each with up to --captions-per-image captions).")] = _TRAIN.batch_size,
    captions_per_image: Annotated[int, typer.Option(help="Captioning: reference captions used per image per step.")] = _TRAIN.captions_per_image,
    class_weights: Annotated[str, typer.Option(help="Classification: none, or balanced (weights n / (C * class count)).")] = _TRAIN.class_weights,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = _TRAIN.lr,
    lr_schedule: Annotated[str, typer.Option(help="Learning-rate schedule: cosine (decay to 0, per step), step (times --lr-gamma every --lr-step-epochs epochs) or constant.")] = _TRAIN.lr_schedule,
    lr_step_epochs: Annotated[int, typer.Option(help="The step schedule's period in epochs.")] = _TRAIN.lr_step_epochs,
    lr_gamma: Annotated[float, typer.Option(help="The step schedule's factor.")] = _TRAIN.lr_gamma,
    warmup_steps: Annotated[int, typer.Option(help="Steps of linear learning-rate warmup before the schedule (0: none).")] = _TRAIN.warmup_steps,
    seed: Annotated[int, typer.Option(help="Random seed (weights init, data order).")] = _TRAIN.seed,
    device: Device_ = _TRAIN.device,
    run: Annotated[str, typer.Option(help="Run name (default: <data>-<fusion>-<timestamp>).", show_default=False)] = _TRAIN.run,
    select_metric: Annotated[str, typer.Option(help="Validation metric that picks the best checkpoint: auto (cider_d / accuracy), cider_d, bleu1..bleu4, rouge_l, accuracy or macro_f1.")] = _TRAIN.select_metric,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = _TRAIN.overwrite,
    encoder_from: Annotated[str, typer.Option(help=_ENCODER_FROM_HELP, show_default=False)] = _TRAIN.encoder_from,
    feature_dim: Annotated[int, typer.Option(help="Image feature width.")] = _MODEL.feature_dim,
    embed_dim: Annotated[int, typer.Option(help="Word embedding width.")] = _MODEL.embed_dim,
    hidden_dim: Annotated[int, typer.Option(help="Decoder / text encoder hidden width.")] = _MODEL.hidden_dim,
    pretrained: Annotated[bool, typer.Option(help="torchvision encoders: start from torchvision's ImageNet weights, read from the torch hub cache (never downloaded).")] = _MODEL.pretrained,
    weights: Annotated[str, typer.Option(help="torchvision encoders: start from this local state dict (.pth or .safetensors).", show_default=False)] = _MODEL.weights,
    freeze: Annotated[Optional[bool], typer.Option("--freeze/--fine-tune", help="torchvision encoders: keep the backbone fixed, or train it (default: frozen with --pretrained/--weights, else trained).", show_default=False)] = None,
    fine_tune_from: Annotated[str, typer.Option(help="With --fine-tune: train the backbone from this top-level module on (e.g. layer4).", show_default=False)] = _MODEL.fine_tune_from,
    max_length: Annotated[int, typer.Option(help="Longest caption generated (validation and later decoding).")] = _DECODE.max_length,
    workers: Annotated[int, typer.Option(help="Processes that read and decode training images (0: the training process).")] = _TRAIN.workers,
    dropout: Annotated[float, typer.Option(help="Dropout probability in the model.")] = _MODEL.dropout,
    precision: Annotated[str, typer.Option(help="fp32, bf16 (autocast; CPU or CUDA) or fp16 (autocast + gradient scaler; CUDA only).")] = _TRAIN.precision,
    accumulate: Annotated[int, typer.Option(help="Micro-batches per optimiser step (gradient accumulation; effective batch = batch size x this).")] = _TRAIN.accumulate,
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0: no clipping).")] = _TRAIN.grad_clip,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = _TRAIN.weight_decay,
    label_smoothing: Annotated[float, typer.Option(help="Cross-entropy label smoothing (0: none).")] = _TRAIN.label_smoothing,
    patience: Annotated[int, typer.Option(help="Early stopping: stop after this many epochs without a better validation metric (0: never).")] = _TRAIN.patience,
    save_every: Annotated[int, typer.Option(help="Also save the resumable checkpoint every N optimiser steps (0: after each epoch and on Ctrl-C only).")] = _TRAIN.save_every,
    resume: Annotated[bool, typer.Option(help="Continue the run named by --run from its resumable checkpoint (its saved config; other flags are ignored).")] = False,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard event files into the run (needs the tensorboard package).")] = _TRAIN.tensorboard,
    compile: Annotated[bool, typer.Option("--compile", help="Run the model through torch.compile (falls back to eager, saying why, where unsupported).")] = _TRAIN.compile,
    scst: Annotated[bool, typer.Option("--scst", help="Self-critical sequence training: fine-tune the captioner --from RUN with a CIDEr-D reward.")] = _TRAIN.scst,
    scst_from: Annotated[str, typer.Option("--from", help="With --scst: the trained captioner (run name) to start from.", show_default=False)] = _TRAIN.scst_from,
    scst_samples: Annotated[int, typer.Option(help="With --scst: captions sampled per image per step.")] = _TRAIN.scst_samples,
    scst_baseline: Annotated[str, typer.Option(help="With --scst: mean (of the other samples' rewards) or greedy (the greedy caption's reward).")] = _TRAIN.scst_baseline,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with 'model', 'train', 'decode' sections; flags override it.", show_default=False)] = None,
    workspace: Workspace_ = None,
) -> None:
    """Train a captioner (image -> caption) or a classifier (image + text -> label); keeps the best
    epoch by validation CIDEr-D (captioning) or accuracy (classification).

    Examples: mmfuse train --data shapes --fusion attention --run sat;
    mmfuse train --data shapes-qa --task classify --fusion transformer --run qa
    """
    from rich.markup import escape

    from mmfuse.distributed import world_from_env
    from mmfuse.training import train
    from mmfuse.ui import console
    from mmfuse.workspace import Workspace

    cfg = _run_config(
        config,
        model={**_explicit(ctx, task=task, fusion=fusion, encoder=encoder, decoder=decoder, text_encoder=text_encoder,
                           feature_dim=feature_dim, embed_dim=embed_dim, hidden_dim=hidden_dim, pretrained=pretrained,
                           weights=weights, fine_tune_from=fine_tune_from, dropout=dropout),
               **({"freeze_encoder": freeze} if freeze is not None else {})},
        train=_explicit(ctx, data=data, epochs=epochs, batch_size=batch_size, captions_per_image=captions_per_image,
                        class_weights=class_weights, lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup_steps, seed=seed, device=device, run=run,
                        overwrite=overwrite, select_metric=select_metric, encoder_from=encoder_from, workers=workers,
                        lr_step_epochs=lr_step_epochs, lr_gamma=lr_gamma, precision=precision, accumulate=accumulate,
                        grad_clip=grad_clip, weight_decay=weight_decay, label_smoothing=label_smoothing,
                        patience=patience, save_every=save_every, tensorboard=tensorboard, compile=compile,
                        scst=scst, scst_from=scst_from, scst_samples=scst_samples, scst_baseline=scst_baseline),
        decode=_explicit(ctx, max_length=max_length),
    )
    result = train(Workspace.open(workspace), cfg, _print_epoch, resume=resume)
    if world_from_env().main:
        console().print(f"run [bold]{result.config.train.run}[/] at {escape(str(result.run_dir))}: best epoch {result.best_epoch}, "
                        f"val {result.config.train.select_metric} {result.best_score:.4f}")


def _print_epoch(rec: dict[str, Any]) -> None:
    from mmfuse.ui import console

    mark = " *best*" if rec["best"] else ""
    if "val_cider_d" in rec:
        scores = f"val BLEU-4 {rec['val_bleu4']:.4f}  CIDEr-D {rec['val_cider_d']:.4f}"
    else:
        scores = f"val accuracy {rec['val_accuracy']:.4f}  macro F1 {rec['val_macro_f1']:.4f}"
    console().print(f"epoch {rec['epoch']}: loss {rec['train_loss']:.3f}  {scores}  ({rec['images_per_s']:.0f} samples/s){mark}")


def _run_config(path: Optional[Path], **flags: dict[str, Any]) -> RunConfig:
    """defaults < config file < command-line flags."""
    from mmfuse.config import from_dict, load_config_file, to_dict

    base = to_dict(RunConfig())
    file = load_config_file(path) if path else {}
    unknown = sorted(set(file) - set(base))
    if unknown:
        raise MmfuseError(f"config file {path}: unknown section(s) {', '.join(unknown)}; valid: model, train, decode")
    merged = {**base}
    for section in ("model", "train", "decode"):
        from_file = file.get(section, {})
        if not isinstance(from_file, dict):
            raise MmfuseError(f"config file {path}: section {section!r} must be an object")
        merged[section] = {**base[section], **from_file, **flags.get(section, {})}
    cfg = from_dict(RunConfig, merged, f"config file {path}" if path else "config")
    cfg.validate()
    return cfg


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Optional[str], typer.Option(help="Run to evaluate (captions a split of its data set).", show_default=False)] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Score this results file instead (COCO results JSON or JSONL).", show_default=False)] = None,
    references: Annotated[Optional[str], typer.Option(help="With --predictions: a COCO captions file or a workspace data set name.", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="Data set split to caption and score (or to take references from).")] = "test",
    checkpoint: Annotated[str, typer.Option(help="Weights to use: best or last.")] = "best",
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (needs Java and pycocoevalcap).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    show: Annotated[int, typer.Option(help="Show this many example captions beside their references (classifier: predictions beside labels).")] = 0,
    worst: Annotated[int, typer.Option(help="List the N images with the lowest CIDEr-D, with caption and references (classifier: the N most confident mistakes).")] = 0,
    ablate: Annotated[Optional[str], typer.Option(help="Take one modality away: image or text (see --ablate-mode).", show_default=False)] = None,
    ablate_mode: Annotated[str, typer.Option(help="shuffle (another sample's image/text), zero (mean-colour image / empty text), or auto (zero for a captioner's text, else shuffle).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per decoding batch.")] = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
    beam_size: BeamSize_ = None, max_length: MaxLength_ = None, min_length: MinLength_ = None,
    length_penalty: LengthPenalty_ = None, n_best: NBest_ = None, no_repeat_ngram: NoRepeat_ = None,
    diverse_groups: Groups_ = None, diversity: Diversity_ = None, sample: Sample_ = None,
    temperature: Temperature_ = None, top_k: TopK_ = None, top_p: TopP_ = None, seed: Seed_ = None, cache: Cache_ = None,
) -> None:
    """Score captions with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, exactly as coco-caption does, or a
    classifier with accuracy, per-class and macro precision/recall/F1, AUROC and the confusion matrix.

    Examples: mmfuse evaluate --run demo --beam-size 3 --worst 5;
    mmfuse evaluate --run qa --ablate image;
    mmfuse evaluate --predictions results.json --references captions_val2014.json
    """
    from mmfuse.evaluation import Ablation, evaluate_files, evaluate_run
    from mmfuse.workspace import Workspace

    if batch_size < 1 or show < 0 or worst < 0:
        raise MmfuseError("--batch-size must be >= 1, --show and --worst >= 0")
    if (run is None) == (predictions is None):
        raise MmfuseError("give either --run, or --predictions with --references")
    if predictions is not None and references is None:
        raise MmfuseError("--predictions needs --references (a COCO captions file or a data set name)")
    if run is not None and references is not None:
        raise MmfuseError("--references goes with --predictions, not with --run")
    if ablate is not None and run is None:
        raise MmfuseError("--ablate goes with --run")
    ws = Workspace.open(workspace)
    if run is not None:
        ablation = Ablation(ablate, ablate_mode) if ablate is not None else None
        decode = _decode_options(beam_size, max_length, min_length, length_penalty, n_best, no_repeat_ngram,
                                 diverse_groups, diversity, sample, temperature, top_k, top_p, seed, cache)
        report = evaluate_run(ws, run, split, decode, checkpoint, device, batch_size, meteor, ablation)
    else:
        report = evaluate_files(ws, predictions, references, split, meteor)
    if report.get("task") == "classify":
        _print_classification(report, show, worst)
    else:
        _print_report(report, show, worst)
    if json_out:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))


_METRIC_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
                 "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider_d": "CIDEr-D"}


def _print_report(report: dict[str, Any], show: int, worst: int) -> None:
    from rich.table import Table

    from mmfuse.evaluation import worst as worst_images
    from mmfuse.ui import console

    if "run" in report:
        decode = from_dict(DecodeConfig, report["decode"], "report")
        console().print(f"[bold]{report['run']}[/] on {report['data']}/{report['split']}: {report['num_images']} images, "
                        f"{decode.describe()}, {report['checkpoint']} weights (epoch {report['epoch']})"
                        f"{_ablation_note(report)}")
    else:
        console().print(f"{report['predictions']} against {report['references']}: {report['num_images']} images",
                        markup=False)
    table = Table()
    names = [k for k in _METRIC_NAMES if k in report["metrics"]]
    for name in names:
        table.add_column(_METRIC_NAMES[name], justify="right")
    table.add_row(*(f"{report['metrics'][k]:.4f}" for k in names))
    console().print(table)
    if report["meteor"].startswith("unavailable"):
        console().print(f"METEOR {report['meteor']}", markup=False)
    if show:
        _print_images("examples", report["images"][:show])
    if worst:
        _print_images(f"{worst} lowest CIDEr-D", worst_images(report, worst), with_score=True)


def _ablation_note(report: dict[str, Any]) -> str:
    a = report.get("ablation")
    return f", [bold]{a['modality']} ablated ({a['mode']})[/]" if a else ""


def _print_classification(report: dict[str, Any], show: int, worst: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.evaluation import confident_mistakes
    from mmfuse.ui import console

    m = report["metrics"]
    console().print(f"[bold]{report['run']}[/] on {report['data']}/{report['split']}: {report['num_samples']} samples, "
                    f"{report['checkpoint']} weights (epoch {report['epoch']}){_ablation_note(report)}")
    table = Table()
    names = ["accuracy", "macro_precision", "macro_recall", "macro_f1"] + (["auroc"] if "auroc" in m else [])
    for name in names + ["majority class rate"]:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_row(*(f"{m[k]:.4f}" for k in names), f"{report['majority_rate']:.4f}")
    console().print(table)
    confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
    confusion.add_column("")
    for label in report["labels"]:
        confusion.add_column(escape(label), justify="right")
    for label, row in zip(report["labels"], m["confusion_matrix"]):
        confusion.add_row(escape(label), *map(str, row))
    console().print(confusion)
    if "per_group" in report:
        groups = Table(title="accuracy per group")
        for name in ("group", "accuracy", "samples"):
            groups.add_column(name, justify="left" if name == "group" else "right")
        for name, g in report["per_group"].items():
            groups.add_row(escape(name or "(none)"), f"{g['accuracy']:.4f}", str(g["support"]))
        console().print(groups)
    if show:
        _print_samples("examples", report["samples"][:show])
    if worst:
        _print_samples(f"{worst} most confident mistakes", confident_mistakes(report, worst))


def _print_samples(title: str, samples: list[dict[str, Any]]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title)
    for column in ("image", "text", "label", "prediction", "probability"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for s in samples:
        table.add_row(escape(Path(s["image"]).name), escape(s["text"]), escape(s["label"]), escape(s["prediction"]),
                      f"{s['probabilities'][s['prediction']]:.3f}")
    console().print(table)


def _print_images(title: str, items: list[dict[str, Any]], with_score: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    table = Table(title=title, show_lines=True)
    table.add_column("image")
    if with_score:
        table.add_column("CIDEr-D", justify="right")
    table.add_column("generated")
    table.add_column("references")
    for item in items:
        name = Path(item["image"]).name if "image" in item else str(item["id"])
        score = [f"{item['scores']['cider_d']:.3f}"] if with_score else []
        table.add_row(escape(name), *score, escape(item["caption"]), escape("\n".join(item["references"])))
    console().print(table)


@app.command("caption")
def caption_cmd(
    ctx: typer.Context,
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files, directories (searched recursively), glob patterns, or '-' to read them from stdin, one per line.", show_default=False)],
    run: Annotated[str, typer.Option(help="Run whose model captions the images.")],
    output_format: Annotated[str, typer.Option("--format", help="tsv (path, caption, score), text (captions only), jsonl (one object per image), or json (one array).")] = "tsv",
    json_lines: Annotated[bool, typer.Option("--json", help="Same as --format jsonl.", hidden=True)] = False,
    attention_map: Annotated[Optional[Path], typer.Option(help="Write one PNG per image into this directory: each word of the best caption over the image, lit where the model attended (attention fusions).", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="Weights to use: best or last.")] = "best",
    batch_size: Annotated[int, typer.Option(help="Images per decoding batch.")] = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
    beam_size: BeamSize_ = None, max_length: MaxLength_ = None, min_length: MinLength_ = None,
    length_penalty: LengthPenalty_ = None, n_best: NBest_ = None, no_repeat_ngram: NoRepeat_ = None,
    diverse_groups: Groups_ = None, diversity: Diversity_ = None, sample: Sample_ = None,
    temperature: Temperature_ = None, top_k: TopK_ = None, top_p: TopP_ = None, seed: Seed_ = None, cache: Cache_ = None,
) -> None:
    """Caption images: results on stdout in input order, one image at a time as they are ready.
    An image that cannot be read is reported on stderr and skipped; the exit code is then 1.

    Examples: mmfuse caption photos/ --run demo --beam-size 5 --n-best 3 --format jsonl;
    find photos -name '*.jpg' | mmfuse caption - --run demo --sample --top-p 0.9 --seed 1
    """
    from mmfuse.caption_output import write_results
    from mmfuse.inference import caption_run
    from mmfuse.workspace import Workspace

    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    if json_lines and "output_format" in _explicit(ctx, output_format=output_format) and output_format != "jsonl":
        raise MmfuseError(f"--json means --format jsonl; it conflicts with --format {output_format}")
    output_format = "jsonl" if json_lines else output_format
    if output_format not in ("tsv", "text", "jsonl", "json"):
        raise MmfuseError(f"--format must be tsv, text, jsonl or json, got {output_format!r}")
    options = _decode_options(beam_size, max_length, min_length, length_penalty, n_best, no_repeat_ngram,
                              diverse_groups, diversity, sample, temperature, top_k, top_p, seed, cache)
    decode, results = caption_run(Workspace.open(workspace), run, images, _stdin_paths(), options, checkpoint, device,
                                  batch_size, attention_map)
    failed = write_results(results, decode, output_format, sys.stdout,
                           lambda message: typer.echo(f"mmfuse: warning: {message}", err=True))
    if failed.total == 0:
        raise MmfuseError("no images given (pass image files, directories, patterns, or - to read paths from stdin)")
    if failed.total == 1 and failed.problems:
        raise MmfuseError(failed.problems[0])
    if failed.paths:
        shown = ", ".join(str(p) for p in failed.paths[:5]) + (", ..." if len(failed.paths) > 5 else "")
        raise MmfuseError(f"{len(failed.paths)} of {failed.total} inputs could not be captioned: {shown}")


@app.command("predict")
def predict_cmd(
    images: Annotated[Optional[list[str]], typer.Argument(metavar="[IMAGE]...", help="Image files ('-': paths from stdin), each classified with --text.", show_default=False)] = None,
    run: Annotated[str, typer.Option(help="Classification run to use.")] = ...,
    text: Annotated[Optional[str], typer.Option(help="The text paired with every image (e.g. a question).", show_default=False)] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="JSON Lines file of {\"image\", \"text\"} pairs ('-': stdin) instead of IMAGE... --text.", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="Weights to use: best or last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON Lines ({path, text, label, probabilities}) instead of TSV.")] = False,
    batch_size: Annotated[int, typer.Option(help="Samples per batch.")] = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Classify (image, text) pairs: prints 'path<TAB>label<TAB>probability' per pair on stdout, in input order.

    Examples: mmfuse predict img.png --text "is the circle red ?" --run qa;
    mmfuse predict --pairs questions.jsonl --run qa --json
    """
    from mmfuse.inference import predict_run, read_pairs
    from mmfuse.workspace import Workspace

    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    if pairs is not None and (images or text is not None):
        raise MmfuseError("give either IMAGE... with --text, or --pairs FILE, not both")
    lines = None
    if pairs is not None:
        lines = _utf8_lines(sys.stdin.buffer, "standard input") if str(pairs) == "-" else _read_lines(pairs)
    paths, texts = read_pairs(images or [], text, lines, str(pairs), _stdin_paths())
    for path, question, probs in predict_run(Workspace.open(workspace), run, paths, texts, checkpoint, device, batch_size):
        label = max(probs, key=probs.get)
        if json_out:
            typer.echo(json.dumps({**json_path(path), "text": question, "label": label, "probabilities": probs}))
        else:
            typer.echo(f"{printable(str(path))}\t{label}\t{probs[label]:.4f}")


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (one clear error for a missing, non-regular or non-UTF-8 file)."""
    from mmfuse.workspace import open_regular

    with open_regular(path, "pairs") as handle:
        data = handle.read()
    return _utf8_lines(data.splitlines(), str(path))


def _utf8_lines(lines: Iterable[bytes], where: str) -> list[str]:
    """Lines decoded as UTF-8; a line that is not is one error naming it."""
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError as exc:
            raise MmfuseError(f"{where}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return out


def _stdin_paths() -> Iterator[str]:
    """Lines of standard input as paths: any bytes a file name may hold (not only UTF-8) are kept."""
    for line in sys.stdin.buffer:
        yield os.fsdecode(line.rstrip(b"\r\n"))


@app.command("compare", cls=RegistryHelpCommand)
def compare_cmd(
    ctx: typer.Context,
    fusions: Annotated[str, typer.Option("--fusion", help="Comma-separated fusions to train and rank.")],
    data: Annotated[str, typer.Option(help="Workspace data set (the same for every fusion).")] = _TRAIN.data,
    name: Annotated[Optional[str], typer.Option(help="Comparison name: runs are <name>-<fusion> (default: the data set's name).", show_default=False)] = None,
    ablate: Annotated[str, typer.Option(help="Comma-separated modalities to ablate at evaluation: image, text (empty: none).")] = "",
    task: Annotated[str, typer.Option(help=_MODEL_HELP["task"])] = _MODEL.task,
    encoder: Annotated[str, typer.Option(help=_MODEL_HELP["encoder"])] = _MODEL.encoder,
    decoder: Annotated[str, typer.Option(help=_MODEL_HELP["decoder"])] = _MODEL.decoder,
    text_encoder: Annotated[str, typer.Option(help=_MODEL_HELP["text_encoder"])] = _MODEL.text_encoder,
    epochs: Annotated[int, typer.Option(help="Passes over the training data (each fusion).")] = _TRAIN.epochs,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = _TRAIN.batch_size,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = _TRAIN.lr,
    seed: Annotated[int, typer.Option(help="Random seed (the same for every fusion).")] = _TRAIN.seed,
    encoder_from: Annotated[str, typer.Option(help=_ENCODER_FROM_HELP + " The same for every fusion.", show_default=False)] = _TRAIN.encoder_from,
    device: Device_ = _TRAIN.device,
    meteor: Annotated[bool, typer.Option(help="Also compute METEOR (slower; needs Java and pycocoevalcap).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="JSON config shared by every fusion; flags override it.", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """Train several fusions with the same data, encoder, seed and budget, evaluate each on the test
    split (and with a modality ablated), and print a leaderboard; also written to compare/<name>/.

    Example: mmfuse compare --data shapes-qa --fusion concat,gated,attention,transformer,late --ablate image,text
    """
    from mmfuse.compare import compare
    from mmfuse.ui import console
    from mmfuse.workspace import Workspace

    cfg = _run_config(
        config,
        model=_explicit(ctx, task=task, encoder=encoder, decoder=decoder, text_encoder=text_encoder),
        train=_explicit(ctx, data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                        encoder_from=encoder_from),
    )
    ablations = [a.strip() for a in ablate.split(",") if a.strip()]
    board = compare(Workspace.open(workspace), cfg, [f.strip() for f in fusions.split(",") if f.strip()],
                    name or cfg.train.data, ablations, meteor, lambda msg: console().print(msg, markup=False), _print_epoch)
    _print_leaderboard(board)
    if json_out:
        typer.echo(json.dumps(board, indent=2))


_BOARD_HEADERS = {"fusion": "fusion", "sequence_model": "model", "parameters": "params", "train_seconds": "train s",
                  "samples_per_s": "samples/s", "accuracy": "accuracy", "macro_f1": "macro F1",
                  "majority_rate": "majority", **_METRIC_NAMES}


def _print_leaderboard(board: dict[str, Any]) -> None:
    """The leaderboard's main columns (every column is in the JSON and CSV files)."""
    from rich.markup import escape
    from rich.table import Table

    from mmfuse.ui import console

    main = board["ranked_by"]
    columns = [c for c in _BOARD_HEADERS if c in board["rows"][0]]
    ablated = [k for k in board["rows"][0] if k.startswith(f"{main}_without_")]
    groups = [k for k in board["rows"][0] if k.startswith("group:")]  # accuracy per group (e.g. question kind)
    table = Table(title=f"{board['data']} ({board['task']}), ranked by {_BOARD_HEADERS[main]}")
    for column in columns:
        table.add_column(_BOARD_HEADERS[column], justify="left" if column in ("fusion", "sequence_model") else "right")
    for column in ablated:
        table.add_column(f"{_BOARD_HEADERS[main]} w/o {column.rsplit('_', 1)[1]}", justify="right")
    for column in groups:
        table.add_column(escape(column.split(":", 1)[1]), justify="right")
    for row in board["rows"]:
        table.add_row(*(_cell(c, row.get(c, "")) for c in columns + ablated + groups))
    console().print(table)


def _cell(column: str, value: Any) -> str:
    if column == "parameters":
        return f"{value / 1e6:.2f}M"
    if isinstance(value, float):
        return f"{value:.4f}" if column not in ("train_seconds", "samples_per_s") else f"{value:.0f}"
    return str(value)


def main() -> None:
    """Console-script entry point."""
    app()
