"""Commands of the training stage: ``train``, ``train-lm`` and ``compare``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import command_app
from mmfuse.cli.options import (
    ConfigFile_,
    Given,
    HelpCommand,
    Meteor_,
    Workspace_,
    complete_datasets,
    config_options,
    run_config,
)
from mmfuse.workspace import Workspace

app = command_app()
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
