"""The one place mmfuse reads images: checking them, decoding them safely, and turning them into
normalised tensors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from mmfuse.errors import MmfuseError, first_line
from mmfuse.workspace import open_regular, printable

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision's backbones expect
STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as upright 8-bit RGB, or raise one clear error naming the file.

    The EXIF orientation is applied (phone photos stored sideways come out upright); grey, palette,
    CMYK and 16-bit images are converted to RGB (16-bit values scaled to 8 bits, not clipped);
    transparent pixels are composited over white. Pillow's decompression-bomb guard refuses images
    of more than about 179 million pixels."""
    path = Path(path)
    with open_regular(path, "image") as handle:  # never blocks: a named pipe or device is refused
        if os.fstat(handle.fileno()).st_size == 0:
            raise MmfuseError(f"not a readable image file (0 bytes): {printable(str(path))}")
        return _decode(handle, path)


def verify_image(path: str | Path) -> None:
    """Check that ``path`` is a readable image from its header and checksums, without decoding it
    (cheaper than :func:`load_rgb`, for checking many inputs before any output); one clear error
    naming the file otherwise."""
    path = Path(path)
    with open_regular(path, "image") as handle:  # never blocks: a named pipe or device is refused
        try:
            with Image.open(handle) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise MmfuseError(f"not a readable image file: {printable(str(path))} ({first_line(exc)})") from None


def _decode(handle: BinaryIO, path: Path) -> Image.Image:
    """The image in the open file ``handle`` as upright 8-bit RGB (see :func:`load_rgb`)."""
    shown = printable(str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # under the refusal limit: fine
            with Image.open(handle) as img:
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy for the usual image without rotation
                return to_rgb(img)
    except UnidentifiedImageError:
        raise MmfuseError(f"not a readable image file: {shown}") from None
    except Image.DecompressionBombError as exc:
        raise MmfuseError(f"image refused as too large (decompression bomb guard): {shown}: {exc}") from None
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise MmfuseError(f"cannot read image {shown}: {exc or type(exc).__name__}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB (see :func:`load_rgb`)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        img = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, "white")
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def resize_transform(size: int):
    """PIL RGB image -> uint8 tensor (3, size, size): the part worth caching."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])


def normalize_transform():
    """uint8 tensor (3, S, S) -> float tensor in the model's input range (:data:`MEAN`/:data:`STD`)."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def image_transform(size: int):
    """PIL RGB image -> float tensor (3, size, size), normalised with :data:`MEAN`/:data:`STD`."""
    from torchvision.transforms import v2

    return v2.Compose([resize_transform(size), normalize_transform()])
