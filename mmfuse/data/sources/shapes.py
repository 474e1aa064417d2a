"""The built-in ``shapes`` captioning set: coloured shapes on plain or noisy backgrounds.

Every image holds 1-3 objects (circle, square, triangle; 5 colours; 2 sizes) placed apart from left
to right, and comes with 3 differently worded reference captions that name each object's size,
colour and shape and their left-to-right relations. Generation is deterministic: image ``i`` of a
split depends only on ``(seed, split, i)``, so the same seed gives byte-identical files, and the
test split does not change when the training split grows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from mmfuse.config import ShapesConfig
from mmfuse.data.sources import SOURCES, SPLITS, DrawnImages, RawSample
from mmfuse.errors import MmfuseError

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 190),
}
SIZES = {"small": 0.09, "large": 0.17}  # half-size as a fraction of the image side
SUPERSAMPLE = 4  # shapes are drawn 4x larger, then box-filtered: anti-aliased edges

CAPTIONS = {
    1: ("a {0}", "there is a {0}", "a {0} on a {bg} background"),
    2: ("a {0} to the left of a {1}", "a {1} to the right of a {0}", "a {0} next to a {1} on a {bg} background"),
    3: (
        "a {0} , a {1} and a {2} from left to right",
        "a {0} to the left of a {1} and a {2}",
        "a {2} to the right of a {1} which is to the right of a {0}",
    ),
}


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    half: float

    def phrase(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


class DrawnSet(DrawnImages):
    """What the built-in sets share: the :class:`ShapesConfig` options, ``per_image`` samples per
    drawn image."""

    name = "shapes"  # as registered, for messages
    per_image = 1

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(ShapesConfig.__dataclass_fields__))
        if unknown:
            raise MmfuseError(f"source {self.name!r} does not take option(s): {', '.join(unknown)}")
        self.opts = ShapesConfig(**options)
        self.opts.validate()

    def options(self) -> dict[str, Any]:
        return asdict(self.opts)

    def count(self, split: str) -> int:
        return self.per_image * getattr(self.opts, f"{split}_images")


@SOURCES.register("shapes")
class ShapesSource(DrawnSet):
    """Synthetic shapes with attribute and spatial-relation captions (built in, no download)."""

    task = "caption"

    def samples(self) -> Iterator[RawSample]:
        for split_index, split in enumerate(SPLITS):
            for i in range(self.count(split)):
                rng = np.random.default_rng([self.opts.seed, split_index, i])
                image, captions = make_example(rng, self.opts.image_size)
                yield RawSample(split=split, id=f"{split}-{i:06d}", image=image, captions=captions)


def make_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[ShapeObject], bool]:
    """One image, its objects (left to right) and whether its background is noisy, from ``rng``."""
    objects = _place_objects(rng, size)
    noisy = bool(rng.random() < 0.5)
    return _draw(rng, size, objects, noisy), objects, noisy


def make_example(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str]]:
    """One image and its captions, drawn from ``rng``."""
    image, objects, noisy = make_scene(rng, size)
    phrases = [o.phrase() for o in objects]
    background = "noisy" if noisy else "plain"
    captions = [t.format(*phrases, bg=background) for t in CAPTIONS[len(objects)]]
    return image, captions


def _place_objects(rng: np.random.Generator, size: int) -> list[ShapeObject]:
    """1-3 objects whose horizontal extents do not overlap, sorted left to right."""
    gap = max(2.0, size / 32)
    while True:
        count = int(rng.integers(1, 4))
        placed: list[ShapeObject] = []
        for _ in range(count):
            obj = _try_place(rng, size, placed, gap)
            if obj is None:
                break
            placed.append(obj)
        if len(placed) == count:
            return sorted(placed, key=lambda o: o.cx)


def _try_place(rng: np.random.Generator, size: int, placed: list[ShapeObject], gap: float) -> ShapeObject | None:
    size_name = str(rng.choice(list(SIZES)))
    half = SIZES[size_name] * size * float(rng.uniform(0.9, 1.1))
    shape = str(rng.choice(SHAPES))
    colour = str(rng.choice(list(COLOURS)))
    lo, hi = half + 1, size - half - 2
    for _ in range(50):
        cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        if all(abs(cx - o.cx) >= half + o.half + gap for o in placed):
            return ShapeObject(shape, colour, size_name, cx, cy, half)
    return None


def _draw(rng: np.random.Generator, size: int, objects: list[ShapeObject], noisy: bool) -> Image.Image:
    """Background (plain or Gaussian noise) with each object alpha-blended on top."""
    base = rng.uniform(90, 200) + rng.uniform(-15, 15, size=3)
    canvas = np.broadcast_to(base, (size, size, 3)).astype(np.float64)
    if noisy:
        canvas = canvas + rng.normal(0, 10, size=(size, size, 3))
    for obj in objects:
        colour = np.array(COLOURS[obj.colour], dtype=np.float64) + rng.uniform(-15, 15, size=3)
        alpha = _mask(obj, size)[..., None]
        canvas = canvas * (1 - alpha) + colour * alpha
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Anti-aliased coverage of one object, floats in [0, 1], shape (size, size)."""
    s = SUPERSAMPLE
    big = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, h = obj.cx * s, obj.cy * s, obj.half * s
    if obj.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif obj.shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    else:
        draw.polygon([(cx, cy - h), (cx - h, cy + h * 0.8), (cx + h, cy + h * 0.8)], fill=255)
    return np.asarray(big.reduce(s), dtype=np.float64) / 255.0
