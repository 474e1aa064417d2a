"""Commands of the data stage: ``prepare-data`` and ``cache-features``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mmfuse.cli import render
from mmfuse.cli.app import command_app
from mmfuse.cli.options import BatchSize_, Device_, Given, HelpCommand, Workspace_, complete_datasets, config_options
from mmfuse.errors import MmfuseError
from mmfuse.workspace import Workspace

app = command_app()
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
    from mmfuse.progress import LazyProgress

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
    from mmfuse.progress import LazyProgress

    if data is None or "encoder" not in given.get("model", {}):
        raise MmfuseError("cache-features needs --data NAME and --encoder NAME (a torchvision encoder)")
    if batch_size < 1 or workers < 0:
        raise MmfuseError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    cfg = ModelConfig(**given["model"])
    with LazyProgress() as bar:
        result = cache_dataset_features(Workspace.open(workspace), data, cfg, batch_size, workers, device,
                                        lambda done, total: bar.update("encoding images", done, total))
    render.print_cached(result)
