"""The built-in ``shapes-qa`` classification set: yes/no questions about shapes images whose answer
needs BOTH the image and the question.

Each image (drawn as in ``shapes``) gets two questions of one kind, one answered "yes" and one
"no", so the answer is balanced per image (the image alone says nothing) and, by symmetry, per
question text (the question alone says nothing). The kinds are balanced too: each image first
draws its kind uniformly, then scenes are drawn until one allows that kind (a relation needs two
objects with unique names, which only about half of the scenes have):

- relation: "is the red circle to the left of the blue square ?" (yes: the true order, no: swapped),
- attribute: "is the small triangle green ?" (yes: its colour, no: another colour),
- existence: "is there a large yellow circle ?" (yes: an object in the image, no: the same object
  with one attribute changed, which is not in the image).

Each sample's ``group`` is its kind, so ``evaluate`` reports the accuracy per kind.

Objects are named by the shortest description that is unique in the image (shape; colour + shape;
size + colour + shape). Deterministic: image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.sources.shapes import COLOURS, SHAPES, SIZES, DrawnSet, ShapeObject, make_scene

LABELS = ("no", "yes")
KINDS = ("existence", "attribute", "relation")


class Question(NamedTuple):
    """A question pair about one image; ``kind`` is ``existence``, ``attribute`` or ``relation``."""

    kind: str
    yes: str
    no: str


@SOURCES.register("shapes-qa")
class ShapesQASource(DrawnSet):
    """Yes/no questions about synthetic shapes images (built in, no download); 2 per image."""

    task = "classify"
    name = "shapes-qa"
    per_image = 2

    def samples(self) -> Iterator[RawSample]:
        for split_index, split in enumerate(SPLITS):
            for i in range(getattr(self.opts, f"{split}_images")):
                rng = np.random.default_rng([self.opts.seed, split_index, i, 7])
                image, pair = make_example(rng, self.opts.image_size)
                image_id = f"{split}-{i:06d}"
                for k, (text, label) in enumerate(_shuffled([(pair.yes, "yes"), (pair.no, "no")], rng)):
                    yield RawSample(split=split, id=f"{image_id}-q{k}", image=image, text=text, label=label,
                                    image_id=image_id, group=pair.kind)


def _shuffled(pair: list[tuple[str, str]], rng: np.random.Generator) -> list[tuple[str, str]]:
    return pair if rng.random() < 0.5 else pair[::-1]


def make_example(rng: np.random.Generator, size: int) -> tuple[Image.Image, Question]:
    """An image and a (yes, no) question pair about it; the kind is uniform over ``KINDS``."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    while True:  # terminates: 1-3 objects are drawn at random, so every kind comes up
        image, objects, _ = make_scene(rng, size)
        if kind in allowed_kinds(objects):
            return image, make_question(rng, kind, objects)


def allowed_kinds(objects: list[ShapeObject]) -> list[str]:
    """The question kinds that ``objects`` can be asked about."""
    names = unique_names(objects)
    kinds = ["existence"]
    if any(_without_colour(o, objects) for o in objects):
        kinds.append("attribute")
    if _relation_pairs(names):
        kinds.append("relation")
    return kinds


def make_question(rng: np.random.Generator, kind: str, objects: list[ShapeObject]) -> Question:
    """A (yes, no) question pair of ``kind`` (one of :func:`allowed_kinds`) about ``objects``."""
    return _MAKERS[kind](rng, objects, unique_names(objects))


def unique_names(objects: list[ShapeObject]) -> list[str]:
    """The shortest description of each object that no other object in the image shares."""
    names = []
    for o in objects:
        for words in ((o.shape,), (o.colour, o.shape), (o.size, o.colour, o.shape)):
            if sum(_matches(other, words) for other in objects) == 1:
                names.append(" ".join(words))
                break
        else:
            names.append("")  # two identical objects: never asked about
    return names


def _matches(o: ShapeObject, words: tuple[str, ...]) -> bool:
    return set(words) <= {o.shape, o.colour, o.size}


def _without_colour(o: ShapeObject, objects: list[ShapeObject]) -> str:
    """A unique description of ``o`` that does not say its colour ("" if there is none)."""
    for words in ((o.shape,), (o.size, o.shape)):
        if sum(_matches(other, words) for other in objects) == 1:
            return " ".join(words)
    return ""


def _relation_pairs(names: list[str]) -> list[tuple[int, int]]:
    """Index pairs (a, b), a < b, of objects that both have a unique name."""
    return [(a, b) for a in range(len(names)) for b in range(a + 1, len(names)) if names[a] and names[b]]


def _relation(rng: np.random.Generator, objects: list[ShapeObject], names: list[str]) -> Question:
    pairs = _relation_pairs(names)
    a, b = pairs[int(rng.integers(len(pairs)))]  # objects are sorted left to right: a is left of b
    template = "is the {} to the left of the {} ?" if rng.random() < 0.5 else "is the {} to the right of the {} ?"
    left_question = "left" in template
    first, second = (a, b) if left_question else (b, a)
    yes, no = template.format(names[first], names[second]), template.format(names[second], names[first])
    return Question("relation", yes, no)


def _attribute(rng: np.random.Generator, objects: list[ShapeObject], names: list[str]) -> Question:
    candidates = [(o, d) for o in objects if (d := _without_colour(o, objects))]
    obj, desc = candidates[int(rng.integers(len(candidates)))]
    others = [c for c in COLOURS if c != obj.colour]
    wrong = others[int(rng.integers(len(others)))]
    return Question("attribute", f"is the {desc} {obj.colour} ?", f"is the {desc} {wrong} ?")


def _existence(rng: np.random.Generator, objects: list[ShapeObject], names: list[str]) -> Question:
    """Yes: an object in the image. No: the same object with one attribute changed, absent from the
    image (a near miss: the two questions differ in one word, so only checking every attribute of
    the objects answers them; an object has 7 near misses and at most 2 other objects are
    present, so one always exists)."""
    present = {(o.size, o.colour, o.shape) for o in objects}
    obj = objects[int(rng.integers(len(objects)))]
    described = (obj.size, obj.colour, obj.shape)
    near = [miss for miss in near_misses(described) if miss not in present]
    size, colour, shape = near[int(rng.integers(len(near)))]
    yes, no = f"is there a {obj.size} {obj.colour} {obj.shape} ?", f"is there a {size} {colour} {shape} ?"
    return Question("existence", yes, no)


def near_misses(described: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """Every (size, colour, shape) that differs from ``described`` in exactly one attribute."""
    misses = []
    for k, values in enumerate((SIZES, COLOURS, SHAPES)):
        misses += [described[:k] + (v,) + described[k + 1:] for v in values if v != described[k]]
    return misses


_MAKERS = {"existence": _existence, "attribute": _attribute, "relation": _relation}
