"""Commands that run a trained model on new inputs: ``caption``, ``ask`` and ``predict``."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterable, Iterator, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import command_app
from mmfuse.cli.options import (
    DECODE,
    BatchSize_,
    Checkpoint_,
    Device_,
    Given,
    HelpCommand,
    Workspace_,
    check_decoding,
    config_options,
    run_name,
    run_option,
)
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, json_path, printable

if TYPE_CHECKING:  # (8 ms to import: every command would pay it)
    from mmfuse.generate.inputs import InputItem
    from mmfuse.generate.outputs import Summary

app = command_app()


@app.command(cls=HelpCommand, name="caption", short_help="Caption images with a run.")
@config_options(*DECODE, default_note="the run's")
def caption_cmd(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE", help="Image files, directories (searched recursively), glob patterns, or '-' to read them from stdin, one per line.", show_default=False)],
    given: Given,
    run: run_option("Run whose model captions the images") = None,
    output_format: Annotated[Optional[str], typer.Option("--format", help="tsv (path, caption, score), text (a line per input image: its captions, tab-separated; empty when the image was skipped), jsonl (one object per image), or json (one array) (default: tsv).", show_default=False)] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="Same as --format jsonl.", hidden=True)] = False,
    attention_map: Annotated[Optional[Path], typer.Option(help="Write one PNG per image into this directory: each word of the best caption over the image, lit where the model attended (attention fusions).", show_default=False)] = None,
    checkpoint: Checkpoint_ = "best",
    batch_size: BatchSize_ = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Caption images: results on stdout in input order, one image at a time as they are ready.
    An image that cannot be read is reported on stderr and skipped; the exit code is then 1.

    Examples:

    \b
      mmfuse caption photos/ --run demo --beam-size 5 --n-best 3 --format jsonl
      find photos -name '*.jpg' | mmfuse caption - --sample --top-p 0.9
    """
    from mmfuse.generate.inputs import expand_inputs
    from mmfuse.generate.outputs import write_results

    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    if json_lines and output_format not in (None, "jsonl"):
        raise MmfuseError(f"--json means --format jsonl; it conflicts with --format {output_format}")
    output_format = "jsonl" if json_lines else output_format or "tsv"
    if output_format not in ("tsv", "text", "jsonl", "json"):
        raise MmfuseError(f"--format must be tsv, text, jsonl or json, got {output_format!r}")
    ws = Workspace.open(workspace)
    chosen = run_name(ws, run)
    check_decoding(ws, chosen, given)
    items = _first_checked(expand_inputs(images, _stdin_paths()), "-" not in images)
    from mmfuse.generate.inference import caption_run  # torch: after the checks that need no model

    decode, results = caption_run(ws, chosen, items, given.get("decode", {}), checkpoint, device, batch_size,
                                  attention_map)
    failed = write_results(results, decode, output_format, sys.stdout, render.warn)
    _check_written(failed, "no images given (pass image files, directories, patterns, or - to read paths from stdin)",
                   "captioned")


@app.command(cls=HelpCommand, name="ask", short_help="Answer questions about images with a run.")
@config_options(*DECODE, default_note="the run's")
def ask_cmd(
    given: Given,
    images: Annotated[Optional[list[str]], typer.Argument(metavar="[IMAGE]", help="Image files, directories, glob patterns, or '-' (paths from stdin), each asked --question.", show_default=False)] = None,
    question: Annotated[Optional[str], typer.Option(help="The question asked of every image.", show_default=False)] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="JSON Lines of {\"image\", \"question\"} ('-': stdin) instead of IMAGE... --question.", show_default=False)] = None,
    run: run_option("Answering run whose model answers") = None,
    output_format: Annotated[Optional[str], typer.Option("--format", help="tsv (path, question, answer, score), text (a line per input: its answers, tab-separated; empty when skipped), jsonl (one object per input), or json (one array) (default: tsv).", show_default=False)] = None,
    checkpoint: Checkpoint_ = "best",
    batch_size: BatchSize_ = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Answer questions about images: results on stdout in input order, as they are ready. An image
    that cannot be read is reported on stderr and skipped; the exit code is then 1. Words of a
    question that the model never saw are named on stderr.

    Examples:

    \b
      mmfuse ask photo.jpg --question "what color is the car ?" --run vqa
      ls *.jpg | mmfuse ask - --question "how many dogs ?" --format jsonl | head
      mmfuse ask --pairs questions.jsonl --beam-size 3 --format json
    """
    from mmfuse.generate.inputs import asked, expand_inputs, question_pairs
    from mmfuse.generate.outputs import write_results

    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    output_format = output_format or "tsv"
    if output_format not in ("tsv", "text", "jsonl", "json"):
        raise MmfuseError(f"--format must be tsv, text, jsonl or json, got {output_format!r}")
    if pairs is not None and (images or question is not None):
        raise MmfuseError("give either IMAGE... with --question, or --pairs FILE, not both")
    if pairs is None and (question is None or not question.strip()):
        raise MmfuseError("give --question TEXT with the images, or --pairs FILE (JSON Lines of {\"image\", \"question\"})")
    ws = Workspace.open(workspace)
    chosen = run_name(ws, run)
    check_decoding(ws, chosen, given)
    if pairs is not None:
        lines = _utf8_lines(sys.stdin.buffer, "standard input") if str(pairs) == "-" else _read_lines(pairs)
        items = question_pairs(lines, "standard input" if str(pairs) == "-" else str(pairs))
    else:
        items = _first_checked(asked(expand_inputs(images or [], _stdin_paths()), question), "-" not in (images or []))
    from mmfuse.generate.inference import ask_run  # torch: after the checks that need no model

    decode, results = ask_run(ws, chosen, items, given.get("decode", {}), checkpoint, device, batch_size,
                              render.warn)
    failed = write_results(results, decode, output_format, sys.stdout, render.warn, "ask")
    _check_written(failed, "no images given (pass image files, directories, patterns, - to read paths from stdin, or "
                   "--pairs FILE)", "answered")


@app.command(cls=HelpCommand, name="predict", short_help="Classify (image, text) pairs with a run.")
def predict_cmd(
    images: Annotated[Optional[list[str]], typer.Argument(metavar="[IMAGE]", help="Image files ('-': paths from stdin), each classified with --text.", show_default=False)] = None,
    run: run_option("Classification run to use") = None,
    text: Annotated[Optional[str], typer.Option(help="The text paired with every image (e.g. a question).", show_default=False)] = None,
    pairs: Annotated[Optional[Path], typer.Option(help="JSON Lines file of {\"image\", \"text\"} pairs ('-': stdin) instead of IMAGE... --text.", show_default=False)] = None,
    checkpoint: Checkpoint_ = "best",
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON Lines ({path, text, label, probabilities}) instead of TSV.")] = False,
    batch_size: BatchSize_ = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Classify (image, text) pairs: prints 'path<TAB>text<TAB>label<TAB>probability' per pair on stdout,
    in input order. Words of a text that the model never saw are named on stderr.

    Examples:

    \b
      mmfuse predict img.png --text "is the circle red ?" --run qa
      mmfuse predict --pairs questions.jsonl --run qa --json
    """
    if batch_size < 1:
        raise MmfuseError(f"--batch-size must be >= 1, got {batch_size}")
    if pairs is not None and (images or text is not None):
        raise MmfuseError("give either IMAGE... with --text, or --pairs FILE, not both")
    lines = None
    if pairs is not None:
        lines = _utf8_lines(sys.stdin.buffer, "standard input") if str(pairs) == "-" else _read_lines(pairs)
    from mmfuse.generate.inputs import check_images, read_pairs

    paths, texts = read_pairs(images or [], text, lines, str(pairs), _stdin_paths())
    ws = Workspace.open(workspace)
    run = run_name(ws, run)
    ws.existing_run(run)
    check_images(paths)
    from mmfuse.generate.inference import predict_run  # torch: after the checks that need no model

    for path, question, probs in predict_run(ws, run, paths, texts, checkpoint, device, batch_size,
                                             render.warn):
        label = max(probs, key=probs.get)
        if json_out:
            typer.echo(json.dumps({**json_path(path), "text": question, "label": label, "probabilities": probs}))
        else:
            typer.echo(f"{printable(str(path))}\t{printable(question)}\t{label}\t{probs[label]:.4f}")


def _check_written(failed: Summary, none_given: str, done: str) -> None:
    """What could not be written, as one error: no inputs at all, the one input's problem, or how many
    of the inputs failed (each was named on stderr as it was skipped)."""
    if failed.total == 0:
        raise MmfuseError(none_given)
    if failed.total == 1 and failed.problems:
        raise MmfuseError(failed.problems[0])
    if failed.paths:
        shown = ", ".join(str(p) for p in failed.paths[:5]) + (", ..." if len(failed.paths) > 5 else "")
        raise MmfuseError(f"{len(failed.paths)} of {failed.total} inputs could not be {done}: {shown}")


def _first_checked(items: Iterator[InputItem], peek: bool) -> Iterator[InputItem]:
    """``items``, where a lone input that names no readable file is an error at once (before the model
    loads); ``peek`` is off when the inputs come from stdin, whose next line may be slow to come."""
    if not peek:
        return items
    first = list(itertools.islice(items, 2))
    if len(first) == 1 and first[0].problem is not None:
        raise MmfuseError(first[0].problem)
    return itertools.chain(first, items)


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
