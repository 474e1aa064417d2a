"""Attention heat-maps in the style of Show, Attend and Tell's figures: the image once, then one
panel per generated word with the image lit where the model attended while producing that word."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from mmfuse.data.images import load_rgb
from mmfuse.errors import MmfuseError
from mmfuse.workspace import atomic_write_bytes

PANEL = 160  # side of each square panel, pixels
LABEL = 22  # height of the word strip above each panel
COLUMNS = 6


def attention_figure(image_path: Path, words: list[str], weights: torch.Tensor) -> Image.Image:
    """The figure for one caption: ``weights`` (T, N) is the attention over the N grid cells (a
    square grid) while producing each of the T = len(words) words."""
    side = grid_side(weights.size(-1))
    image = load_rgb(image_path).resize((PANEL, PANEL), Image.Resampling.BICUBIC)
    panels = [(_label(image, "(image)"))] + [_label(_overlay(image, w.view(side, side)), word)
                                             for word, w in zip(words, weights)]
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    sheet = Image.new("RGB", (columns * PANEL, rows * (PANEL + LABEL)), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % columns) * PANEL, (i // columns) * (PANEL + LABEL)))
    return sheet


def write_figure(figure: Image.Image, path: Path) -> None:
    """Save a figure as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def grid_side(cells: int) -> int:
    """The side of a square grid of ``cells`` cells."""
    side = math.isqrt(cells)
    if side * side != cells:
        raise MmfuseError(f"cannot draw attention over a grid of {cells} cells: it is not square")
    return side


def _overlay(image: Image.Image, weights: torch.Tensor) -> Image.Image:
    """The image darkened where attention (G, G) is low, as in Show-Attend-Tell: each pixel keeps
    20 % of its brightness plus 80 % times the (upsampled) weight relative to the maximum."""
    relative = (weights / weights.max().clamp_min(1e-12)).float().cpu().numpy()
    light = Image.fromarray((relative * 255).astype("uint8"), mode="L").resize(image.size, Image.Resampling.BILINEAR)
    black = Image.new("RGB", image.size, "black")
    return Image.composite(image, black, light.point(lambda v: 51 + v * 204 // 255))


def _label(panel: Image.Image, word: str) -> Image.Image:
    out = Image.new("RGB", (PANEL, PANEL + LABEL), "white")
    out.paste(panel, (0, LABEL))
    draw = ImageDraw.Draw(out)
    draw.text((PANEL // 2, LABEL // 2), word, fill="black", anchor="mm", font=ImageFont.load_default(size=16))
    return out
