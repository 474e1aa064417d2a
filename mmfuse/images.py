"""Reading user images safely and turning them into normalised tensors."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmfuse.errors import MmfuseError

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as torchvision's backbones expect
STD = (0.229, 0.224, 0.225)


def load_rgb(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB, or raise one clear error naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise MmfuseError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise MmfuseError(f"not an image file (a directory): {path}") from None
    except UnidentifiedImageError:
        raise MmfuseError(f"not a readable image file: {path}") from None
    except Image.DecompressionBombError as exc:
        raise MmfuseError(f"image refused as too large (decompression bomb guard): {path}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MmfuseError(f"cannot read image {path}: {exc}") from None


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
