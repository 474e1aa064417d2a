"""The built-in shapes-qa set: deterministic, balanced, answers correct, and unanswerable from one
modality alone (checked on the data itself, independently of any model)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

import numpy as np

from mmfuse.data.sources.shapes import ShapeObject, make_scene
from mmfuse.data.sources.shapes_qa import (
    KINDS,
    allowed_kinds,
    make_example,
    make_question,
)
from tests.conftest import invoke


def _prepare(ws: Path, *extra: str) -> Path:
    res = invoke("prepare-data", "shapes-qa", "-w", str(ws), "--train-images", "40", "--val-images", "6",
                 "--test-images", "6", *extra)
    assert res.exit_code == 0, res.stderr
    return ws / "datasets" / "shapes-qa"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_bytes_and_two_balanced_questions_per_image(tmp_path: Path) -> None:
    a, b = _prepare(tmp_path / "a", "--seed", "4"), _prepare(tmp_path / "b", "--seed", "4")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["task"] == "classify" and manifest["labels"] == ["no", "yes"]
    assert manifest["splits"]["train"] == {"images": 40, "samples": 80, "labels": {"no": 40, "yes": 40}}
    per_image = defaultdict(list)
    for rec in _lines(a / "train.jsonl"):
        per_image[rec["image"]].append(rec["label"])
        assert (a / rec["image"]).is_file() and rec["tokens"][-1] == "?"
        assert rec["group"] == _kind(rec["text"])  # the question kind, reported apart by evaluate
    assert len(per_image) == 40 and all(sorted(v) == ["no", "yes"] for v in per_image.values())


def _answer(question: str, objects: list[ShapeObject]) -> bool:
    """An independent oracle: parse the question and check it against the scene."""
    def find(desc: str) -> list[ShapeObject]:
        words = set(desc.split())
        return [o for o in objects if words <= {o.size, o.colour, o.shape}]

    if m := re.fullmatch(r"is there a (\w+) (\w+) (\w+) \?", question):
        return bool(find(" ".join(m.groups())))
    if m := re.fullmatch(r"is the (.+) to the (left|right) of the (.+) \?", question):
        (a,), (b,) = find(m.group(1)), find(m.group(3))  # unique descriptions
        return a.cx < b.cx if m.group(2) == "left" else a.cx > b.cx
    m = re.fullmatch(r"is the (.+) (\w+) \?", question)
    assert m, question
    (obj,) = find(m.group(1))
    return obj.colour == m.group(2)


def _kind(question: str) -> str:
    if question.startswith("is there"):
        return "existence"
    return "relation" if re.search(r" to the (left|right) of ", question) else "attribute"


def test_yes_questions_are_true_and_no_questions_false_for_every_kind() -> None:
    kinds: Counter = Counter()
    for i in range(400):
        rng = np.random.default_rng([11, i])
        _, objects, _ = make_scene(rng, 64)
        for asked in allowed_kinds(objects):
            kind, yes, no = make_question(rng, asked, objects)
            assert _answer(yes, objects) and not _answer(no, objects), (yes, no, objects)
            assert asked == kind == _kind(yes) == _kind(no)
            kinds[kind] += 1
    assert min(kinds.values()) > 150 and len(kinds) == 3, kinds


@pytest.mark.slow
def test_question_kinds_are_balanced() -> None:
    """Each kind is about a third of the questions, though only about half of the scenes allow a
    relation question (choosing among the kinds an image allows gave relations 19 %)."""
    kinds = Counter(make_example(np.random.default_rng([3, i]), 64)[1].kind for i in range(1500))
    assert all(0.3 < kinds[k] / 1500 < 0.37 for k in KINDS), kinds


def test_existence_no_questions_are_near_misses_of_the_yes_object() -> None:
    """The "no" twin names the "yes" object with exactly one attribute changed, and every attribute
    (size, colour, shape) gets changed in some pairs: no attribute can be ignored."""
    changed: Counter = Counter()
    for i in range(600):
        rng = np.random.default_rng([5, i])
        _, objects, _ = make_scene(rng, 64)
        _, yes, no = make_question(rng, "existence", objects)
        diff = [k for k, (a, b) in enumerate(zip(yes.split(), no.split())) if a != b]
        assert len(yes.split()) == len(no.split()) and len(diff) == 1, (yes, no)
        changed[diff[0]] += 1
    assert sorted(changed) == [3, 4, 5] and min(changed.values()) > 10, changed  # size, colour, shape words


@pytest.mark.slow
def test_neither_the_question_nor_the_image_alone_gives_the_answer(tmp_path: Path) -> None:
    """A lookup of the training answers by exact question text, applied to the test split, is at
    chance; so is any image-only rule (each image has one yes and one no question)."""
    root = _prepare(tmp_path / "ws", "--train-images", "3000", "--test-images", "600")
    by_text: dict[str, Counter] = defaultdict(Counter)
    for rec in _lines(root / "train.jsonl"):
        by_text[rec["text"]][rec["label"]] += 1
    test = _lines(root / "test.jsonl")
    guesses = [by_text[r["text"]].most_common(1)[0][0] if by_text[r["text"]] else "yes" for r in test]
    accuracy = sum(g == r["label"] for g, r in zip(guesses, test)) / len(test)
    assert 0.44 <= accuracy <= 0.56, accuracy
