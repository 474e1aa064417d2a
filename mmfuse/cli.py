"""The ``mmfuse`` command line. Each command parses options, builds a typed config and calls ONE
core function. Heavy libraries (torch, spaCy) are imported inside commands, so ``--help`` is fast.

Errors: an :class:`~mmfuse.errors.MmfuseError` or a usage error becomes one line on stderr and a
non-zero exit; anything else is reported as an internal error (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # Typer >= 0.20 vendors click as typer._click; older Typer uses the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

from mmfuse import __version__
from mmfuse.config import DecodeConfig, ModelConfig, RunConfig, ShapesConfig, TrainConfig
from mmfuse.errors import MmfuseError

_DEBUG = {"on": False}  # set per invocation by --debug or $MMFUSE_DEBUG


def _fail(message: str, code: int) -> None:
    typer.echo(f"mmfuse: error: {message}", err=True)
    sys.exit(code)


class MmfuseGroup(TyperGroup):
    """Turns every expected failure into one clear stderr line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        _DEBUG["on"] = bool(os.environ.get("MMFUSE_DEBUG"))
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
        except Exception as exc:  # a bug: say so in one line unless debugging
            if _DEBUG["on"]:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=MmfuseGroup,
    name="mmfuse",
    help="Multimodal (image + text) fusion: prepare data, train, evaluate and caption.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


_REGISTRY_OPTIONS = {"fusion": "fusion", "encoder": "encoder", "decoder": "decoder"}


def _registry_names(kind: str) -> list[str]:
    from mmfuse.models.decoders import DECODERS
    from mmfuse.models.encoders import IMAGE_ENCODERS
    from mmfuse.models.fusion import FUSIONS

    return {"fusion": FUSIONS, "encoder": IMAGE_ENCODERS, "decoder": DECODERS}[kind].names()


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
_SHAPES = ShapesConfig()
_TRAIN = TrainConfig()
_MODEL = ModelConfig()
_DECODE = DecodeConfig()


@app.command("prepare-data")
def prepare_data_cmd(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Data source: shapes (built-in synthetic captioning set).")],
    name: Annotated[Optional[str], typer.Option(help="Data set name in the workspace (default: the source name).", show_default=False)] = None,
    train_images: Annotated[int, typer.Option(help="shapes: training images to generate.")] = _SHAPES.train_images,
    val_images: Annotated[int, typer.Option(help="shapes: validation images to generate.")] = _SHAPES.val_images,
    test_images: Annotated[int, typer.Option(help="shapes: test images to generate.")] = _SHAPES.test_images,
    image_size: Annotated[int, typer.Option(help="shapes: image side in pixels.")] = _SHAPES.image_size,
    seed: Annotated[int, typer.Option(help="shapes: random seed (same seed, same bytes).")] = _SHAPES.seed,
    min_count: Annotated[int, typer.Option(help="Keep words seen at least this often in training captions.")] = 1,
    workspace: Workspace_ = None,
) -> None:
    """Turn a data source into a workspace data set (images, tokenized captions, vocabulary).

    Example: mmfuse prepare-data shapes --train-images 12000 --seed 0
    """
    from rich.markup import escape

    from mmfuse.data.prepare import prepare_data
    from mmfuse.ui import LazyProgress, console
    from mmfuse.workspace import Workspace

    options = _explicit(ctx, train_images=train_images, val_images=val_images, test_images=test_images,
                        image_size=image_size, seed=seed)
    with LazyProgress() as bar:
        result = prepare_data(Workspace.open(workspace), source, options, name, min_count, bar.update)
    m = result.manifest
    counts = ", ".join(f"{s} {c['images']} images / {c['captions']} captions" for s, c in m["splits"].items())
    console().print(f"data set [bold]{m['name']}[/] at {escape(str(result.path))}: {counts}; vocabulary {m['vocab_size']} words")


@app.command("train", cls=RegistryHelpCommand)
def train_cmd(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Workspace data set to train on.")] = _TRAIN.data,
    fusion: Annotated[str, typer.Option(help="Fusion strategy.")] = _MODEL.fusion,
    encoder: Annotated[str, typer.Option(help="Image encoder.")] = _MODEL.encoder,
    decoder: Annotated[str, typer.Option(help="Caption decoder.")] = _MODEL.decoder,
    epochs: Annotated[int, typer.Option(help="Passes over the training images.")] = _TRAIN.epochs,
    batch_size: Annotated[int, typer.Option(help="Images per step (each with all its captions, up to --captions-per-image).")] = _TRAIN.batch_size,
    captions_per_image: Annotated[int, typer.Option(help="Reference captions used per image per step.")] = _TRAIN.captions_per_image,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = _TRAIN.lr,
    lr_schedule: Annotated[str, typer.Option(help="Learning-rate schedule: cosine (decay to 0, per step) or constant.")] = _TRAIN.lr_schedule,
    seed: Annotated[int, typer.Option(help="Random seed (weights init, data order).")] = _TRAIN.seed,
    device: Device_ = _TRAIN.device,
    run: Annotated[str, typer.Option(help="Run name (default: <data>-<fusion>-<timestamp>).", show_default=False)] = _TRAIN.run,
    select_metric: Annotated[str, typer.Option(help="Validation metric that picks the best checkpoint: cider_d, bleu1..bleu4 or rouge_l.")] = _TRAIN.select_metric,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run of the same name.")] = _TRAIN.overwrite,
    feature_dim: Annotated[int, typer.Option(help="Image feature width.")] = _MODEL.feature_dim,
    embed_dim: Annotated[int, typer.Option(help="Word embedding width.")] = _MODEL.embed_dim,
    hidden_dim: Annotated[int, typer.Option(help="Decoder hidden width.")] = _MODEL.hidden_dim,
    max_length: Annotated[int, typer.Option(help="Longest caption generated (validation and later decoding).")] = _DECODE.max_length,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with 'model', 'train', 'decode' sections; flags override it.", show_default=False)] = None,
    workspace: Workspace_ = None,
) -> None:
    """Train a captioner: image encoder -> fusion -> decoder; keeps the best epoch by validation CIDEr-D.

    Example: mmfuse train --data shapes --fusion concat --epochs 8 --run demo
    """
    from rich.markup import escape

    from mmfuse.training import train
    from mmfuse.ui import console
    from mmfuse.workspace import Workspace

    cfg = _run_config(
        config,
        model=_explicit(ctx, fusion=fusion, encoder=encoder, decoder=decoder, feature_dim=feature_dim,
                        embed_dim=embed_dim, hidden_dim=hidden_dim),
        train=_explicit(ctx, data=data, epochs=epochs, batch_size=batch_size, captions_per_image=captions_per_image,
                        lr=lr, lr_schedule=lr_schedule, seed=seed, device=device, run=run, overwrite=overwrite,
                        select_metric=select_metric),
        decode=_explicit(ctx, max_length=max_length),
    )

    def on_epoch(rec: dict[str, Any]) -> None:
        mark = " *best*" if rec["best"] else ""
        console().print(f"epoch {rec['epoch']}: loss {rec['train_loss']:.3f}  val BLEU-4 {rec['val_bleu4']:.4f}"
                        f"  CIDEr-D {rec['val_cider_d']:.4f}"
                        f"  ({rec['images_per_s']:.0f} img/s){mark}")

    result = train(Workspace.open(workspace), cfg, on_epoch)
    console().print(f"run [bold]{result.config.train.run}[/] at {escape(str(result.run_dir))}: best epoch {result.best_epoch}, "
                    f"val {result.config.train.select_metric} {result.best_score:.4f}")


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
    beam_size: Annotated[Optional[int], typer.Option(help="Beam size (1 = greedy) (default: the run's).", show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest caption (default: the run's).", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="Weights to use: best or last.")] = "best",
    meteor: Annotated[bool, typer.Option(help="Compute METEOR (needs Java and pycocoevalcap).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    show: Annotated[int, typer.Option(help="Show this many example captions beside their references.")] = 0,
    worst: Annotated[int, typer.Option(help="List the N images with the lowest CIDEr-D, with caption and references.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per decoding batch.")] = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Score captions with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, exactly as coco-caption does.

    Examples: mmfuse evaluate --run demo --beam-size 3 --worst 5;
    mmfuse evaluate --predictions results.json --references captions_val2014.json
    """
    from mmfuse.evaluation import evaluate_files, evaluate_run
    from mmfuse.workspace import Workspace

    if batch_size < 1 or show < 0 or worst < 0:
        raise MmfuseError("--batch-size must be >= 1, --show and --worst >= 0")
    if (run is None) == (predictions is None):
        raise MmfuseError("give either --run, or --predictions with --references")
    if predictions is not None and references is None:
        raise MmfuseError("--predictions needs --references (a COCO captions file or a data set name)")
    if run is not None and references is not None:
        raise MmfuseError("--references goes with --predictions, not with --run")
    ws = Workspace.open(workspace)
    if run is not None:
        report = evaluate_run(ws, run, split, beam_size, max_length, checkpoint, device, batch_size, meteor)
    else:
        report = evaluate_files(ws, predictions, references, split, meteor)
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
        d = report["decode"]
        console().print(f"[bold]{report['run']}[/] on {report['data']}/{report['split']}: {report['num_images']} images, "
                        f"beam size {d['beam_size']}, {report['checkpoint']} weights (epoch {report['epoch']})")
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
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files; '-' reads paths from stdin, one per line.", show_default=False)],
    run: Annotated[str, typer.Option(help="Run whose model captions the images.")],
    beam_size: Annotated[Optional[int], typer.Option(help="Beam size (1 = greedy) (default: the run's).", show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest caption (default: the run's).", show_default=False)] = None,
    checkpoint: Annotated[str, typer.Option(help="Weights to use: best or last.")] = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON Lines ({path, caption, beam_size}) instead of TSV.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per decoding batch.")] = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Caption images: prints 'path<TAB>caption' per image on stdout, in input order.

    Example: ls photos/*.png | mmfuse caption - --run demo --beam-size 3
    """
    from mmfuse.inference import caption_run
    from mmfuse.workspace import Workspace

    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    results = caption_run(Workspace.open(workspace), run, images, sys.stdin, beam_size, max_length, checkpoint, device, batch_size)
    for path, words, decode in results:
        if json_out:
            typer.echo(json.dumps({"path": str(path), "caption": " ".join(words), "beam_size": decode.beam_size}))
        else:
            typer.echo(f"{path}\t{' '.join(words)}")


def main() -> None:
    """Console-script entry point."""
    app()
