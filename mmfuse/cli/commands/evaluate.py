"""The evaluation command: ``evaluate`` (a run, or a results file against references)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import command_app, no_blas_threads, skip_teardown
from mmfuse.cli.options import (
    DECODE,
    BatchSize_,
    Checkpoint_,
    Device_,
    Given,
    HelpCommand,
    Meteor_,
    Workspace_,
    check_decoding,
    config_options,
    run_name,
    run_option,
)
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace

app = command_app()


@app.command(cls=HelpCommand, name="evaluate", short_help="Score a run (or a results file).")
@config_options(*DECODE, default_note="the run's")
def evaluate_cmd(
    given: Given,
    run: run_option("Run to evaluate (captions a split of its data set)") = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Score this results file instead: COCO caption results or VQA results ([{question_id, answer}]), JSON or JSONL.", show_default=False)] = None,
    references: Annotated[Optional[str], typer.Option(help="With --predictions: a COCO captions file, a VQA v2 annotation file, or a workspace data set name.", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="Data set split to caption and score (or to take references from).")] = "test",
    checkpoint: Checkpoint_ = "best",
    meteor: Meteor_ = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout.")] = False,
    show: Annotated[int, typer.Option(help="Show this many example captions beside their references (classifier: predictions beside labels).")] = 0,
    worst: Annotated[int, typer.Option(help="List the N images with the lowest CIDEr-D, with caption and references (classifier: the N most confident mistakes).")] = 0,
    ablate: Annotated[Optional[str], typer.Option(help="Take one modality away: image or text (see --ablate-mode).", show_default=False)] = None,
    ablate_mode: Annotated[str, typer.Option(help="shuffle (another sample's image/text), zero (mean-colour image / empty text), or auto (zero for a captioner's text, else shuffle).")] = "auto",
    batch_size: BatchSize_ = 64,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Score captions with BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, exactly as coco-caption does, a
    classifier with accuracy, per-class and macro precision/recall/F1, AUROC and the confusion matrix,
    or answers with the VQA challenge's accuracy (per answer and question type) and exact match.

    Examples:

    \b
      mmfuse evaluate --run demo --beam-size 3 --worst 5
      mmfuse evaluate --run qa --ablate image
      mmfuse evaluate --predictions results.json --references captions.json
      mmfuse evaluate --predictions vqa.json --references v2_annotations.json
    """
    if batch_size < 1 or show < 0 or worst < 0:
        raise MmfuseError("--batch-size must be >= 1, --show and --worst >= 0")
    if predictions is not None and run is not None:
        raise MmfuseError("give either --run, or --predictions with --references")
    if predictions is not None and references is None:
        raise MmfuseError("--predictions needs --references (a COCO captions file or a data set name)")
    if predictions is None and references is not None:
        raise MmfuseError("--references goes with --predictions, not with --run")
    if ablate is not None and predictions is not None:
        raise MmfuseError("--ablate goes with --run")
    ws = Workspace.open(workspace)
    run = run_name(ws, run) if predictions is None else None
    if run is not None:
        check_decoding(ws, run, given)
        from mmfuse.evaluate.reports import Ablation, evaluate_run  # torch: after the checks

        ablation = Ablation(ablate, ablate_mode) if ablate is not None else None
        report = evaluate_run(ws, run, split, given.get("decode", {}), checkpoint, device, batch_size,
                              meteor, ablation)
    else:
        no_blas_threads()  # before numpy loads
        from mmfuse.evaluate.scoring import evaluate_files, keep_freed_memory  # no torch: scoring text needs none

        skip_teardown()  # the process holds only the report when the command ends
        keep_freed_memory()  # a short process: its large arrays come and go
        report = evaluate_files(ws, predictions, references, split, meteor, meanwhile=render.get_ready)
    if report.get("task") == "classify":
        render.print_classification(report, show, worst)
    elif report.get("task") == "answer":
        render.print_answers(report, show, worst)
    else:
        render.print_report(report, show, worst)
    count = report.get("num_images", report.get("num_samples", report.get("num_questions", 0)))
    if count < render.SMALL_SPLIT:
        noun = "questions" if report.get("task") == "answer" else "images"
        render.warn(f"scored on {count} {noun} only: a score on fewer than {render.SMALL_SPLIT} says little")
    if report.get("unanswered"):
        render.warn(f"{report['unanswered']} question(s) of the references have no answer in {predictions} and are "
                    f"not scored (the official VQA code refuses such results)")
    written = report.pop("written", [])
    if written:
        render.note(f"report written to {written[0]}, { {'classify': 'predictions', 'answer': 'answers'}.get(report.get('task'), 'captions')} to {written[1]}")
    if json_out:
        typer.echo(render.report_json(report))
