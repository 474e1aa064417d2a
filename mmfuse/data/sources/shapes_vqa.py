"""The built-in ``shapes-vqa`` answering set: open questions about shapes images whose answer needs
BOTH the image and the question, each with ten human-style answers.

Each image (drawn as in ``shapes``) gets three questions of three different kinds, drawn uniformly
among the kinds the scene allows:

==================  ============================================  ===========  ======================
question type       example                                       answer type  answers
==================  ============================================  ===========  ======================
``what color``      what color is the small square ?              other        red
``what shape``      what shape is the blue object ?               other        circle
``what size``       what size is the green triangle ?             other        small, large
``how many``        how many circles are there ?                  number       0-3
``what is next to`` what is directly left of the red square ?     other        small blue circle
``is there``        is there a large yellow circle ?              yes/no       yes, no
==================  ============================================  ===========  ======================

Balance: the object a question names is described by what the question does *not* ask (so the
question says nothing of the answer), and an image's three questions ask different things (so the
image alone does not answer them). ``how many`` asks, half of the time, about a shape or colour that
is in the image, else about any of them (0 is a common answer, not the only one); ``is there`` asks
about an object in the image or a near miss (one attribute changed) with equal chance.

Answers: ten per question, as VQA v2 has. For ``what is next to`` seven say the whole description
("small blue circle") and three the shortest name that is unique in the image ("circle") where that
is shorter, as people answer; every other question has ten equal answers. So VQA accuracy gives 1.0
to the whole description and 0.9 to the short name.

Deterministic: image ``i`` of a split depends only on ``(seed, split, i)``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from mmfuse.data.sources import SOURCES, SPLITS, RawSample
from mmfuse.data.sources.shapes import COLOURS, SHAPES, DrawnSet, ShapeObject, make_scene
from mmfuse.data.sources.shapes_qa import near_misses, unique_names

ANNOTATORS = 10
FULL_ANSWERS = 7  # of the ten, for "what is next to": the whole description; the rest the short name


class Asked(NamedTuple):
    """One question with its ten answers and its types."""

    question: str
    answers: list[str]
    question_type: str
    answer_type: str


Maker = Callable[[np.random.Generator, list[ShapeObject]], "Asked | None"]


@SOURCES.register("shapes-vqa")
class ShapesVQASource(DrawnSet):
    """Open questions about synthetic shapes images, ten answers each (built in, no download); 3 per image."""

    task = "answer"
    name = "shapes-vqa"
    per_image = 3

    def samples(self) -> Iterator[RawSample]:
        for split_index, split in enumerate(SPLITS):
            for i in range(getattr(self.opts, f"{split}_images")):
                rng = np.random.default_rng([self.opts.seed, split_index, i, 11])
                image, objects, _ = make_scene(rng, self.opts.image_size)
                image_id = f"{split}-{i:06d}"
                for k, asked in enumerate(make_questions(rng, objects, self.per_image)):
                    yield RawSample(split=split, id=f"{image_id}-q{k}", image=image, image_id=image_id,
                                    question=asked.question, answers=asked.answers,
                                    question_type=asked.question_type, answer_type=asked.answer_type)


def make_questions(rng: np.random.Generator, objects: list[ShapeObject], count: int) -> list[Asked]:
    """``count`` questions of different kinds about ``objects`` (kinds drawn uniformly among those
    the scene allows; ``how many`` and ``is there`` always are)."""
    kinds = list(_MAKERS)
    asked: list[Asked] = []
    for k in rng.permutation(len(kinds)):
        question = _MAKERS[kinds[int(k)]](rng, objects)
        if question is not None:
            asked.append(question)
        if len(asked) == count:
            break
    return asked


def _same(answer: str, question: str, question_type: str, answer_type: str) -> Asked:
    return Asked(question, [answer] * ANNOTATORS, question_type, answer_type)


def _described(objects: list[ShapeObject], asked: str) -> list[tuple[ShapeObject, str]]:
    """Objects with the shortest description that leaves out attribute ``asked`` and is unique."""
    orders = {"colour": (("shape",), ("size", "shape")), "shape": (("colour",), ("size", "colour")),
              "size": (("shape",), ("colour", "shape"))}[asked]
    found = []
    for o in objects:
        for attributes in orders:
            words = tuple(getattr(o, a) for a in attributes)
            if sum(set(words) <= {p.shape, p.colour, p.size} for p in objects) == 1:
                found.append((o, " ".join(words) + (" object" if attributes[-1] != "shape" else "")))
                break
    return found


def _pick(rng: np.random.Generator, items: list) -> Any:
    return items[int(rng.integers(len(items)))]


def _what(attribute: str, word: str) -> Maker:
    """Questions "what <word> is the <object> ?", answered by the object's ``attribute`` (colour,
    shape or size), the object named without it."""
    def ask(rng: np.random.Generator, objects: list[ShapeObject]) -> Asked | None:
        found = _described(objects, attribute)
        if not found:
            return None
        obj, name = _pick(rng, found)
        return _same(getattr(obj, attribute), f"what {word} is the {name} ?", f"what {word}", "other")
    return ask


def _how_many(rng: np.random.Generator, objects: list[ShapeObject]) -> Asked:
    by_shape = bool(rng.random() < 0.5)
    present = sorted({o.shape if by_shape else o.colour for o in objects})
    everything = list(SHAPES) if by_shape else list(COLOURS)
    value = _pick(rng, present) if rng.random() < 0.5 else _pick(rng, everything)
    count = sum((o.shape if by_shape else o.colour) == value for o in objects)
    question = f"how many {value}s are there ?" if by_shape else f"how many {value} objects are there ?"
    return _same(str(count), question, "how many", "number")


def _next_to(rng: np.random.Generator, objects: list[ShapeObject]) -> Asked | None:
    """What is directly left (right) of a named object: its neighbour in the left-to-right order."""
    names = unique_names(objects)
    pairs = [(a, a + 1) for a in range(len(objects) - 1)]
    choices = [(anchor, other, side) for left, right in pairs
               for anchor, other, side in ((right, left, "left"), (left, right, "right")) if names[anchor]]
    if not choices:
        return None
    anchor, other, side = _pick(rng, choices)
    full, short = objects[other].phrase(), names[other] or objects[other].phrase()
    answers = [full] * FULL_ANSWERS + [short] * (ANNOTATORS - FULL_ANSWERS)
    return Asked(f"what is directly {side} of the {names[anchor]} ?", answers, "what is next to", "other")


def _is_there(rng: np.random.Generator, objects: list[ShapeObject]) -> Asked:
    obj = _pick(rng, objects)
    described = (obj.size, obj.colour, obj.shape)
    if rng.random() < 0.5:
        return _same("yes", "is there a {} {} {} ?".format(*described), "is there", "yes/no")
    present = {(o.size, o.colour, o.shape) for o in objects}
    near = [d for d in near_misses(described) if d not in present]  # 7 near misses, at most 2 taken
    return _same("no", "is there a {} {} {} ?".format(*_pick(rng, near)), "is there", "yes/no")


_MAKERS: dict[str, Maker] = {"what color": _what("colour", "color"), "what shape": _what("shape", "shape"),
                             "what size": _what("size", "size"), "how many": _how_many,
                             "what is next to": _next_to, "is there": _is_there}
