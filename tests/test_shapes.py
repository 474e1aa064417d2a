"""The built-in shapes data set: deterministic bytes, caption content, options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from mmfuse.data.sources.shapes import COLOURS, SHAPES, SIZES
from tests.conftest import invoke


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prepare(ws: Path, *extra: str) -> Path:
    res = invoke("prepare-data", "shapes", "-w", str(ws), "--train-images", "30", "--val-images", "5",
                 "--test-images", "5", *extra)
    assert res.exit_code == 0, res.stderr
    return ws / "datasets" / "shapes"


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = _files(_prepare(tmp_path / "a", "--seed", "7"))
    b = _files(_prepare(tmp_path / "b", "--seed", "7"))
    assert len(a) == 30 + 5 + 5 + 5 + 1  # images + 3 jsonl + manifest + vocab + report
    assert a == b


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    a = _files(_prepare(tmp_path / "a", "--seed", "1"))
    b = _files(_prepare(tmp_path / "b", "--seed", "2"))
    pngs = [k for k in a if k.endswith(".png")]
    assert sum(a[k] != b[k] for k in pngs) >= len(pngs) - 2


def test_test_split_does_not_depend_on_train_size(tmp_path: Path) -> None:
    small = _prepare(tmp_path / "a")
    res = invoke("prepare-data", "shapes", "-w", str(tmp_path / "b"), "--train-images", "50", "--val-images", "5", "--test-images", "5")
    assert res.exit_code == 0
    assert (small / "test.jsonl").read_bytes() == (tmp_path / "b/datasets/shapes/test.jsonl").read_bytes()


def test_captions_name_attributes_and_relations(tmp_path: Path) -> None:
    root = _prepare(tmp_path, "--image-size", "48")
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    counts = set()
    phrase = re.compile(rf"(?:{'|'.join(SIZES)}) (?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})")
    for rec in records:
        assert len(rec["captions"]) >= 3 and len(set(rec["captions"])) == len(rec["captions"])
        objects = {len(phrase.findall(c)) for c in rec["captions"]}
        assert len(objects) == 1, rec["captions"]  # every wording names the same objects
        n = objects.pop()
        counts.add(n)
        if n > 1:
            assert any("left" in c or "right" in c for c in rec["captions"])
        assert Image.open(root / rec["image"]).size == (48, 48)
        assert rec["tokens"][0] == rec["captions"][0].split()
    assert counts == {1, 2, 3}


def test_images_are_varied(tmp_path: Path) -> None:
    root = _prepare(tmp_path)
    pixels = [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((root / "images/train").glob("*.png"))]
    noise = [float(np.abs(np.diff(p[:, :, 0], axis=1)).mean()) for p in pixels]
    assert min(noise) < 2.0 < 8.0 < max(noise)  # both plain and noisy backgrounds
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"images": 30, "samples": 30, "captions": 90}
    assert manifest["options"]["seed"] == 0
