"""The built-in shapes-vqa set: deterministic, answers correct (an independent oracle), ten answers
per question, and unanswerable from the question alone or the image alone (checked on the data)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmfuse.data.records import load_answer_split
from mmfuse.data.sources.shapes import ShapeObject, make_scene
from mmfuse.data.sources.shapes_vqa import make_questions
from tests.conftest import invoke


def _prepare(ws: Path, *extra: str) -> Path:
    res = invoke("prepare-data", "shapes-vqa", "-w", str(ws), "--train-images", "30", "--val-images", "6",
                 "--test-images", "6", *extra)
    assert res.exit_code == 0, res.stderr
    return ws / "datasets" / "shapes-vqa"


def test_same_seed_same_bytes_three_kinds_of_question_per_image_ten_answers(tmp_path: Path) -> None:
    a, b = _prepare(tmp_path / "a", "--seed", "3"), _prepare(tmp_path / "b", "--seed", "3")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["task"] == "answer" and manifest["splits"]["train"]["images"] == 30
    records = load_answer_split(a, "train")
    per_image = defaultdict(list)
    for r in records:
        per_image[r.image].append(r.question_type)
        assert len(r.answers) == 10 and r.image.is_file() and r.question_tokens[-1] == "?"
        assert r.answer_tokens[0] == tuple(r.answers[0].split())
    assert len(per_image) == 30 and all(len(set(kinds)) == len(kinds) >= 2 for kinds in per_image.values())
    assert manifest["splits"]["train"]["samples"] == len(records)
    assert manifest["splits"]["train"]["answers"] == 10 * len(records)


def _find(desc: str, objects: list[ShapeObject]) -> list[ShapeObject]:
    words = set(desc.removesuffix(" object").split())
    return [o for o in objects if words <= {o.size, o.colour, o.shape}]


def _oracle(question: str, objects: list[ShapeObject]) -> str:
    """An independent reading of the question against the scene (objects sorted left to right)."""
    if m := re.fullmatch(r"what (color|shape|size) is the (.+) \?", question):
        (obj,) = _find(m.group(2), objects)  # the description is unique
        return {"color": obj.colour, "shape": obj.shape, "size": obj.size}[m.group(1)]
    if m := re.fullmatch(r"how many (\w+?)s are there \?", question):
        return str(sum(o.shape == m.group(1) for o in objects))
    if m := re.fullmatch(r"how many (\w+) objects are there \?", question):
        return str(sum(o.colour == m.group(1) for o in objects))
    if m := re.fullmatch(r"what is directly (left|right) of the (.+) \?", question):
        (anchor,) = _find(m.group(2), objects)
        at = objects.index(anchor) + (-1 if m.group(1) == "left" else 1)
        assert 0 <= at < len(objects)
        return objects[at].phrase()
    if m := re.fullmatch(r"is there a (\w+ \w+ \w+) \?", question):
        return "yes" if _find(m.group(1), objects) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def _generated(images: int) -> list[tuple[int, object]]:
    asked = []
    for i in range(images):
        rng = np.random.default_rng([5, i])
        _, objects, _ = make_scene(rng, 64)
        for q in make_questions(rng, objects, 3):
            assert _oracle(q.question, objects) == Counter(q.answers).most_common(1)[0][0], (q, objects)
            asked.append((i, q))
    return asked


def test_answers_are_right_and_short_names_are_a_minority() -> None:
    asked = _generated(400)
    next_to = [q for _, q in asked if q.question_type == "what is next to"]
    assert next_to and all(Counter(q.answers).most_common(1)[0][1] >= 7 for q in next_to)
    assert any(len(set(q.answers)) == 2 for q in next_to)  # some people gave the short name
    assert {q.answer_type for _, q in asked} == {"yes/no", "number", "other"}


def test_neither_the_question_alone_nor_the_image_alone_answers_it() -> None:
    asked = _generated(1500)
    by_text: dict[str, Counter] = defaultdict(Counter)
    by_image: dict[int, Counter] = defaultdict(Counter)
    for image, q in asked:
        by_text[q.question][q.answers[0]] += 1
        by_image[image][q.answers[0]] += 1
    best_text = sum(c.most_common(1)[0][1] for c in by_text.values()) / len(asked)
    best_image = sum(c.most_common(1)[0][1] for c in by_image.values()) / len(asked)
    # the best anyone can do knowing only the exact question text, or only which image it is
    assert best_text < 0.55 and best_image < 0.40, (best_text, best_image)
    kinds = Counter(q.question_type for _, q in asked)
    assert min(kinds.values()) > 0.08 * len(asked), kinds  # every kind is asked often


def test_a_prepared_answer_data_set_serves_as_references(tmp_path: Path) -> None:
    root = _prepare(tmp_path / "ws")
    records = load_answer_split(root, "test")
    right = [{"question_id": r.id, "answer": r.answers[0]} for r in records]
    wrong = [{**p, "answer": "purple elephant"} for p in right[:4]] + right[4:]
    (tmp_path / "res.json").write_text(json.dumps(wrong))
    out = invoke("evaluate", "--predictions", str(tmp_path / "res.json"), "--references", "shapes-vqa",
                 "--json", "-w", str(tmp_path / "ws"))
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["metrics"]["vqa_accuracy"] == (len(records) - 4) / len(records)
    assert report["questions"][0]["question"] == records[0].question  # the data set holds the text
