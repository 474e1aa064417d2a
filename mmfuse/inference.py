"""Generating captions for image files with a loaded model, in batches, in input order."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from torch.utils.data import DataLoader

from mmfuse.config import DecodeConfig
from mmfuse.data.dataset import ImageDataset
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
) -> Iterator[list[str]]:
    """Yield each image's caption (tokens) in the order of ``paths``; the model stays in eval mode."""
    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(paths, image_size), batch_size=batch_size, shuffle=False)
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
