"""The commands: each reads its options, builds a typed config and calls one core function. Heavy
libraries (torch, spaCy) are imported inside the commands, so ``--help`` and the errors that need no
model are fast."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterable, Iterator, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import app, no_blas_threads, skip_teardown
from mmfuse.cli.options import (
    DECODE_FIELDS,
    BatchSize_,
    Checkpoint_,
    ConfigFile_,
    Device_,
    Given,
    HelpCommand,
    Meteor_,
    Workspace_,
    complete_datasets,
    complete_runs,
    config_options,
    run_config,
    run_option,
)
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace, json_path, printable

if TYPE_CHECKING:  # (8 ms to import: every command would pay it)
    from mmfuse.generate.inputs import InputItem

MODEL_CHOICES = ("model.task", "model.encoder", "model.decoder", "model.text_encoder")
SHARED_TRAINING = (  # what train and compare both take (compare: the same for every fusion)
    "model.feature_dim", "model.embed_dim", "model.hidden_dim", "model.pretrained", "model.weights",
    "model.freeze_encoder", "model.fine_tune_from", "model.dropout",
    *(f"train.{name}" for name in (
        "data", "epochs", "batch_size", "captions_per_image", "class_weights", "lr", "lr_schedule", "lr_step_epochs",
        "lr_gamma", "warmup_steps", "weight_decay", "grad_clip", "seed", "device", "encoder_from", "workers",
        "precision", "accumulate", "label_smoothing", "patience", "compile")),
    "decode.max_length",
    *(f"model.{name}" for name in (  # pretrained language models and connectors
        "prompt", "lora", "lora_alpha", "lora_targets", "finetune_lm", "frozen_dtype", "gradient_checkpointing",
        "image_tokens", "connector_layers", "shuffle", "xattn_every")),
    "train.lr_connector", "train.lr_encoder", "train.lr_decoder", "train.download")
_DECODE = tuple(f"decode.{name}" for name in DECODE_FIELDS)
Data_ = Annotated[Optional[str], typer.Option("--data", help="Workspace data set.", show_default=False,
                                              autocompletion=complete_datasets)]


@app.command(cls=HelpCommand, name="prepare-data", short_help="Make a data set from a source (or built-in set).")
@config_options("shapes.train_images", "shapes.val_images", "shapes.test_images", "shapes.image_size", "shapes.seed")
def prepare_data_cmd(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Data source: shapes, shapes-qa (built-in synthetic sets), coco, karpathy, flickr8k or folder.")],
    given: Given,
    name: Annotated[Optional[str], typer.Option(help="Data set name in the workspace (default: the source name).", show_default=False)] = None,
    images: Annotated[Optional[str], typer.Option(help="coco, karpathy, flickr8k, folder, vqa, llava: the image directory.", show_default=False, rich_help_panel="Real data")] = None,
    annotations: Annotated[Optional[list[str]], typer.Option(help="coco: a captions_*.json file; vqa: a v2_mscoco_*_annotations.json file, one per --questions (repeat for several; names with 'train' give the training split).", show_default=False, rich_help_panel="Real data")] = None,
    questions: Annotated[Optional[list[str]], typer.Option(help="vqa: a v2_OpenEnded_mscoco_*_questions.json file (repeat, in the order of --annotations).", show_default=False, rich_help_panel="Real data")] = None,
    json_file: Annotated[Optional[str], typer.Option("--json", help="karpathy: dataset_coco.json, dataset_flickr8k.json or dataset_flickr30k.json; llava: the instruction JSON (conversations).", show_default=False, rich_help_panel="Real data")] = None,
    captions: Annotated[Optional[str], typer.Option(help="flickr8k: Flickr8k.token.txt; folder: a CSV (image,caption or image,text,label) or JSONL file.", show_default=False, rich_help_panel="Real data")] = None,
    splits_dir: Annotated[Optional[str], typer.Option(help="flickr8k: the directory of Flickr_8k.{train,dev,test}Images.txt.", show_default=False, rich_help_panel="Real data")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(help="coco and vqa (no training file), flickr8k (no --splits-dir), folder (no split column), llava: fraction of images for val (default: 0.05).", show_default=False, rich_help_panel="Real data")] = None,
    test_ratio: Annotated[Optional[float], typer.Option(help="The same for test (default: 0.05).", show_default=False, rich_help_panel="Real data")] = None,
    min_count: Annotated[int, typer.Option(help="Keep words seen at least this often in training captions.")] = 1,
    max_length: Annotated[int, typer.Option(help="Cut tokenized captions to this many tokens (0: keep them whole).")] = 0,
    workspace: Workspace_ = None,
) -> None:
    """Turn a data source into a workspace data set (images, tokenized captions, vocabulary).

    Images of real data sets are checked once (missing, truncated or non-image files are skipped and
    listed in the data set's report.json) and used where they are.

    Examples:

    \b
      mmfuse prepare-data shapes --train-images 12000 --seed 0
      mmfuse prepare-data karpathy --json dataset_coco.json --images coco/
      mmfuse prepare-data folder --images photos/ --captions captions.csv
      mmfuse prepare-data vqa --questions v2_questions.json \\
          --annotations v2_annotations.json --images coco/
      mmfuse prepare-data llava --json llava_instruct.json --images coco/
    """
    from mmfuse.data.prepare import prepare_data
    from mmfuse.ui import LazyProgress

    options = {**given.get("shapes", {}), **{k: v for k, v in (
        ("images", images), ("annotations", annotations), ("questions", questions), ("json", json_file),
        ("captions", captions),
        ("splits_dir", splits_dir), ("val_ratio", val_ratio), ("test_ratio", test_ratio)) if v is not None}}
    with LazyProgress() as bar:
        result = prepare_data(Workspace.open(workspace), source, options, name, min_count,
                              lambda stage, done, total: bar.update(stage if stage == "checking images" else "tokenizing", done, total),
                              max_length)
    render.print_prepared(result)


@app.command(cls=HelpCommand, name="cache-features", short_help="Store a frozen encoder's image features.")
@config_options("model.encoder", "model.pretrained", "model.weights", "model.image_size", "model.vision_layer")
def cache_features_cmd(
    given: Given,
    data: Data_ = None,
    batch_size: BatchSize_ = 32,
    workers: Annotated[int, typer.Option(help="Processes that read and decode images.")] = 2,
    device: Device_ = "auto",
    workspace: Workspace_ = None,
) -> None:
    """Run a frozen torchvision encoder once over every image of a data set and store its outputs
    (fp16, memory-mapped) in the data set; `train` with the same frozen encoder then reads them.
    An interrupted run resumes where it stopped.

    Examples:

    \b
      mmfuse cache-features --data coco --encoder resnet50 --pretrained
    """
    from mmfuse.config import ModelConfig
    from mmfuse.data.features import cache_dataset_features
    from mmfuse.ui import LazyProgress

    if data is None or "encoder" not in given.get("model", {}):
        raise MmfuseError("cache-features needs --data NAME and --encoder NAME (a torchvision encoder)")
    if batch_size < 1 or workers < 0:
        raise MmfuseError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    cfg = ModelConfig(**given["model"])
    with LazyProgress() as bar:
        result = cache_dataset_features(Workspace.open(workspace), data, cfg, batch_size, workers, device,
                                        lambda done, total: bar.update("encoding images", done, total))
    render.print_cached(result)


@app.command(cls=HelpCommand, name="train", short_help="Train a captioner or a classifier.")
@config_options(*MODEL_CHOICES, "model.fusion", *SHARED_TRAINING, "train.run", "train.overwrite", "train.select_metric",
                "train.save_every", "train.tensorboard", "train.scst", "train.scst_from", "train.scst_samples",
                "train.scst_baseline")
def train_cmd(
    given: Given,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run named by --run from its resumable checkpoint (its saved config; other flags are ignored).")] = False,
    config: ConfigFile_ = None,
    workspace: Workspace_ = None,
) -> None:
    """Train a captioner (image -> caption) or a classifier (image + text -> label); keeps the best
    epoch by validation CIDEr-D (captioning) or accuracy (classification).

    Examples:

    \b
      mmfuse train --data shapes --fusion attention --run sat
      mmfuse train --data shapes-qa --task classify --fusion transformer --run qa
    """
    cfg = run_config(config, given)
    ws = Workspace.open(workspace)
    if not resume:
        ws.existing_dataset(cfg.train.data)  # before torch loads: the first error a newcomer meets
    from mmfuse.train.distributed import world_from_env
    from mmfuse.train.loop import train

    result = train(ws, cfg, render.print_epoch, resume=resume)
    if world_from_env().main:
        render.print_trained(result)


@app.command(cls=HelpCommand, name="train-lm", short_help="Train a small language model on a data set's captions.")
def train_lm_cmd(
    data: Annotated[str, typer.Option("--data", help="Captioning data set whose training captions it learns.",
                                      autocompletion=complete_datasets)] = "shapes",
    out: Annotated[Optional[Path], typer.Option(help="Directory to write the model to (default: "
                                                     "<workspace>/language-models/<data>-<architecture>).",
                                                show_default=False)] = None,
    architecture: Annotated[str, typer.Option(help="llama, gpt2 or qwen2.")] = "llama",
    width: Annotated[int, typer.Option(help="Model width.")] = 128,
    layers: Annotated[int, typer.Option(help="Transformer blocks.")] = 2,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    epochs: Annotated[int, typer.Option(help="Passes over the captions.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Blocks of packed captions (128 tokens) per step.")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine decay).")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    context: Annotated[float, typer.Option(help="Share of captions the model reads after a noisy paraphrase "
                                                "(which it is not trained to write): what lets image tokens "
                                                "steer it once frozen. 0: captions only.")] = 0.8,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """Train a small causal language model (Llama, GPT-2 or Qwen2 architecture, word-level tokenizer)
    on a captioning data set's training captions alone and save it as a Hugging Face model directory:
    a language model that knows the captions' language but has never seen an image, to freeze and
    join to images with a connector (train --decoder hf:DIR).

    Examples:

    \b
      mmfuse train-lm --data shapes --out shapes-lm
      mmfuse train --data shapes --decoder hf:shapes-lm --fusion mlp
    """
    ws = Workspace.open(workspace)
    ws.existing_dataset(data)
    target = out if out is not None else ws.root / "language-models" / f"{data}-{architecture}"
    from mmfuse.train.language_model import LMTrainSettings, train_language_model

    settings = LMTrainSettings(architecture, width, layers, heads, epochs, batch_size, lr, seed,
                              context=context)
    result = train_language_model(ws, data, target, settings, overwrite, render.print_lm_epoch)
    render.print_trained_lm(result)


@app.command(cls=HelpCommand, name="evaluate", short_help="Score a run (or a results file).")
@config_options(*_DECODE, default_note="the run's")
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
    run = _run_name(ws, run) if predictions is None else None
    if run is not None:
        _check_decoding(ws, run, given)
    if run is not None:
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


@app.command(cls=HelpCommand, name="caption", short_help="Caption images with a run.")
@config_options(*_DECODE, default_note="the run's")
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
    run_name = _run_name(ws, run)
    _check_decoding(ws, run_name, given)
    items = _first_checked(expand_inputs(images, _stdin_paths()), "-" not in images)
    from mmfuse.generate.inference import caption_run  # torch: after the checks that need no model

    decode, results = caption_run(ws, run_name, items, given.get("decode", {}), checkpoint, device, batch_size,
                                  attention_map)
    failed = write_results(results, decode, output_format, sys.stdout, render.warn)
    if failed.total == 0:
        raise MmfuseError("no images given (pass image files, directories, patterns, or - to read paths from stdin)")
    if failed.total == 1 and failed.problems:
        raise MmfuseError(failed.problems[0])
    if failed.paths:
        shown = ", ".join(str(p) for p in failed.paths[:5]) + (", ..." if len(failed.paths) > 5 else "")
        raise MmfuseError(f"{len(failed.paths)} of {failed.total} inputs could not be captioned: {shown}")


@app.command(cls=HelpCommand, name="ask", short_help="Answer questions about images with a run.")
@config_options(*_DECODE, default_note="the run's")
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
    run_name = _run_name(ws, run)
    _check_decoding(ws, run_name, given)
    if pairs is not None:
        lines = _utf8_lines(sys.stdin.buffer, "standard input") if str(pairs) == "-" else _read_lines(pairs)
        items = question_pairs(lines, "standard input" if str(pairs) == "-" else str(pairs))
    else:
        items = _first_checked(asked(expand_inputs(images or [], _stdin_paths()), question), "-" not in (images or []))
    from mmfuse.generate.inference import ask_run  # torch: after the checks that need no model

    decode, results = ask_run(ws, run_name, items, given.get("decode", {}), checkpoint, device, batch_size,
                              render.warn)
    failed = write_results(results, decode, output_format, sys.stdout, render.warn, "ask")
    if failed.total == 0:
        raise MmfuseError("no images given (pass image files, directories, patterns, - to read paths from stdin, or "
                          "--pairs FILE)")
    if failed.total == 1 and failed.problems:
        raise MmfuseError(failed.problems[0])
    if failed.paths:
        shown = ", ".join(str(p) for p in failed.paths[:5]) + (", ..." if len(failed.paths) > 5 else "")
        raise MmfuseError(f"{len(failed.paths)} of {failed.total} inputs could not be answered: {shown}")


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
    run = _run_name(ws, run)
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


@app.command(cls=HelpCommand, name="compare", short_help="Train and rank several fusions.")
@config_options(*MODEL_CHOICES, *SHARED_TRAINING)
def compare_cmd(
    fusions: Annotated[str, typer.Option("--fusion", help="Comma-separated fusions to train and rank.")],
    given: Given,
    name: Annotated[Optional[str], typer.Option(help="Comparison name: its runs are <name>-<fusion> (default: the data set's name).", show_default=False)] = None,
    ablate: Annotated[str, typer.Option(help="Comma-separated modalities to ablate at evaluation: image, text (empty: none).")] = "",
    meteor: Meteor_ = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace runs <name>-<fusion> that this comparison did not create.")] = False,
    config: ConfigFile_ = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """Train several fusions with the same data, encoder, seed and budget, evaluate each on the test
    split (and with a modality ablated), and print a leaderboard; also written to compare/<name>/.

    Examples:

    \b
      mmfuse compare --data shapes-qa --fusion concat,gated,late --ablate image
    """
    from mmfuse.evaluate.compare import compare
    from mmfuse.ui import console

    cfg = run_config(config, given)
    ablations = [a.strip() for a in ablate.split(",") if a.strip()]
    board = compare(Workspace.open(workspace), cfg, [f.strip() for f in fusions.split(",") if f.strip()],
                    name or cfg.train.data, ablations, meteor, lambda msg: console().print(msg, markup=False),
                    render.print_epoch, overwrite)
    render.print_leaderboard(board)
    if json_out:
        typer.echo(json.dumps(board, indent=2))


def _run_name(ws: Workspace, run: str | None) -> str:
    """``run``, or the workspace's most recent run (named on stderr)."""
    if run is not None:
        return run
    latest = ws.latest_run()
    render.note(f"using run {latest!r}, the most recent (choose another with --run; see mmfuse list)")
    return latest


def _check_decoding(ws: Workspace, run: str, given: Given) -> None:
    """The run exists and the decoding options given fit its settings (before torch loads)."""
    from mmfuse.config import read_run_config
    from mmfuse.data.vocab import Vocab
    from mmfuse.workspace import read_json

    files = ws.run(run)
    config = read_run_config(ws.existing_run(run))
    decode = config.decode.override(**given.get("decode", {}))
    if not config.model.decoder.startswith("hf:"):  # a language model's tokenizer is checked once loaded
        decode.check_reachable(len(Vocab.from_json(read_json(files.vocab, "run vocabulary"), str(files.vocab))))


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



@app.command(cls=HelpCommand, name="list", short_help="List the data sets and runs.")
def list_cmd(
    what: Annotated[str, typer.Argument(help="all, runs or datasets.", metavar="[all|runs|datasets]")] = "all",
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """List the workspace's data sets and runs: task, size on disk, when made, best validation score.

    Examples:

    \b
      mmfuse list
      mmfuse list runs --json
    """
    from mmfuse.inventory import list_datasets, list_runs

    if what not in ("all", "runs", "datasets"):
        raise MmfuseError(f"list takes all, runs or datasets, got {what!r}")
    ws = Workspace.open(workspace)
    rows = {"datasets": list_datasets(ws) if what != "runs" else None,
            "runs": list_runs(ws) if what != "datasets" else None}
    if json_out:
        typer.echo(json.dumps({k: v for k, v in rows.items() if v is not None}, indent=2, ensure_ascii=False))
        return
    render.print_listing(ws.root, rows["datasets"], rows["runs"])


@app.command(cls=HelpCommand, name="show", short_help="Show one run in full.")
def show_cmd(
    run: Annotated[Optional[str], typer.Argument(help="Run to show (default: the most recent).", show_default=False,
                                                 autocompletion=complete_runs)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print everything as JSON on stdout.")] = False,
    workspace: Workspace_ = None,
) -> None:
    """Show one run: its config, the validation scores of every epoch (best marked), its evaluation
    reports and its files with their sizes.

    Examples:

    \b
      mmfuse show demo
    """
    from mmfuse.inventory import show_run

    ws = Workspace.open(workspace)
    summary = show_run(ws, _run_name(ws, run))
    if json_out:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    render.print_run(summary)
