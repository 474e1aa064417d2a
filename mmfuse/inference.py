"""Inference with a loaded model, in batches, in input order: captions for image files, and class
probabilities for (image, text) pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig
from mmfuse.data.dataset import ImageDataset, LabelledDataset, LabelledRecord
from mmfuse.data.tokenize import tokenize_many
from mmfuse.data.vocab import Vocab
from mmfuse.decoding import generate
from mmfuse.errors import MmfuseError
from mmfuse.device import resolve_device
from mmfuse.models.captioner import Captioner
from mmfuse.models.checkpoint import load_run
from mmfuse.workspace import Workspace


def caption_files(
    model: Captioner,
    vocab: Vocab,
    paths: list[Path],
    image_size: int,
    decode: DecodeConfig,
    batch_size: int = 64,
    blank_images: bool = False,
) -> Iterator[list[str]]:
    """Yield each image's caption (tokens) in the order of ``paths``; the model stays in eval mode.

    ``blank_images`` feeds mean-colour images instead (the image ablation)."""
    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(paths, image_size, blank_images), batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        for images in loader:
            for ids in generate(model, images.to(device), decode):
                yield vocab.decode(ids)
    finally:
        model.train(was_training)


def read_image_list(inputs: Iterable[str], stdin: Iterable[str]) -> list[Path]:
    """Paths from the command line, where ``-`` stands for one path per line of ``stdin``."""
    paths: list[Path] = []
    for item in inputs:
        if item == "-":
            paths.extend(Path(line.strip()) for line in stdin if line.strip())
        else:
            paths.append(Path(item))
    if not paths:
        raise MmfuseError("no images given (pass image paths, or - to read them from stdin)")
    return paths


def check_images(paths: list[Path]) -> None:
    """Fail before any output if an image is missing or not an image (header and checksums)."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not path.exists():
            raise MmfuseError(f"image not found: {path}")
        if path.is_dir():
            raise MmfuseError(f"not an image file (a directory): {path}")
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise MmfuseError(f"not a readable image file: {path} ({exc})") from None



def caption_run(
    workspace: Workspace,
    run: str,
    inputs: list[str],
    stdin: Iterable[str],
    beam_size: int | None = None,
    max_length: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
) -> Iterator[tuple[Path, list[str], DecodeConfig]]:
    """Caption image files with a run's model: yields (path, caption tokens, decoding settings).

    All paths are checked before the model is loaded, so a bad one fails before any output.
    """
    paths = read_image_list(inputs, stdin)
    run_dir = workspace.existing_run(run)
    loaded = load_run(run_dir, checkpoint, resolve_device(device))
    decode = loaded.config.decode.override(beam_size, max_length)
    check_images(paths)
    captions = caption_files(loaded.model, loaded.vocab, paths, loaded.config.model.image_size, decode, batch_size)
    for path, words in zip(paths, captions):
        yield path, words, decode


def labelled_dataset(records: list[LabelledRecord], vocab: Vocab, labels: list[str], image_size: int) -> LabelledDataset:
    """A :class:`LabelledDataset` of data set records (labels as indices into ``labels``)."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({r.label for r in records} - set(index))
    if unknown:
        raise MmfuseError(f"label(s) {', '.join(unknown)} are not among the model's labels ({', '.join(labels)})")
    return LabelledDataset([r.image for r in records], [vocab.encode(r.tokens) for r in records],
                           [index[r.label] for r in records], image_size)


@torch.inference_mode()
def predict_probabilities(model: nn.Module, dataset: LabelledDataset, batch_size: int = 128) -> torch.Tensor:
    """Class probabilities (n, C) for every sample of ``dataset``, in order; the model's mode is kept."""
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([torch.softmax(model(b["images"].to(device), b["tokens"].to(device)).float(), -1).cpu()
                          for b in loader])
    finally:
        model.train(was_training)


def read_pairs(images: list[str], text: str | None, pairs: Iterable[str] | None, where: str,
               stdin: Iterable[str]) -> tuple[list[Path], list[str]]:
    """(image, text) pairs: every image with ``text`` (``-`` reads image paths from ``stdin``), or
    JSON Lines ``{"image", "text"}`` from ``pairs``."""
    import json

    if pairs is None:
        if text is None:
            raise MmfuseError("give --text with the images, or --pairs FILE (JSON Lines of {\"image\", \"text\"})")
        paths = read_image_list(images, stdin)
        return paths, [text] * len(paths)
    paths, texts = [], []
    for n, line in enumerate(pairs, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            paths.append(Path(item["image"]))
            texts.append(str(item["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MmfuseError(f"{where}:{n}: expected a JSON object with \"image\" and \"text\" ({type(exc).__name__}: {exc})") from None
    if not paths:
        raise MmfuseError(f"{where}: no (image, text) pairs")
    return paths, texts


def predict_run(workspace: Workspace, run: str, paths: list[Path], texts: list[str], checkpoint: str = "best",
                device: str = "auto", batch_size: int = 64) -> Iterator[tuple[Path, str, dict[str, float]]]:
    """Classify (image, text) pairs with a classification run: yields (path, text, {label: probability}).

    All images are checked before the model runs, so a bad one fails before any output.
    """
    loaded = load_run(workspace.existing_run(run), checkpoint, resolve_device(device))
    if loaded.labels is None:
        raise MmfuseError(f"run {run!r} is a captioner; use 'mmfuse caption' (predict is for classification runs)")
    check_images(paths)
    token_ids = [loaded.vocab.encode(t) for t in tokenize_many(texts)]
    dataset = LabelledDataset(paths, token_ids, [-1] * len(paths), loaded.config.model.image_size)
    probs = predict_probabilities(loaded.model, dataset, batch_size)
    for path, text, row in zip(paths, texts, probs.tolist()):
        yield path, text, dict(zip(loaded.labels, row))
