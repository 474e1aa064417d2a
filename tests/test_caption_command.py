"""``mmfuse caption`` for real use: directories, patterns and stdin; every output format; bad files
skipped and named; n-best lists; attention heat-maps; a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageStat

from mmfuse.config import DecodeConfig
from mmfuse.generate.heatmaps import LABEL, PANEL, attention_figure
from mmfuse.generate.inputs import Captioned
from mmfuse.generate.outputs import write_results
from tests.conftest import invoke, tiny_run


@pytest.fixture
def photos(trained: Path, tmp_path: Path) -> Path:
    """photos/ with a.png, b.JPG, sub/c.png, sub/deeper/d.png, a corrupt and an empty .png, notes.txt."""
    test_images = sorted((trained / "datasets/tiny/images/test").glob("*.png"))
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    for source, name in zip(test_images, ["a.png", "b.JPG", "sub/c.png", "sub/deeper/d.png"]):
        shutil.copy(source, root / name)
    (root / "sub" / "corrupt.png").write_bytes(test_images[0].read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image, and not picked up from a directory")
    return root


def _caption(trained: Path, *args: str, input: str | None = None):
    return invoke("caption", *args, "--run", "r", "-w", str(trained), input=input)


def test_a_directory_with_bad_files_captions_the_rest_and_names_them(trained: Path, photos: Path) -> None:
    res = _caption(trained, str(photos))
    assert res.exit_code == 1 and "Traceback" not in res.output
    order = [photos / n for n in ["a.png", "b.JPG", "empty.png", "sub/c.png", "sub/corrupt.png", "sub/deeper/d.png"]]
    good = [p for p in order if p.name not in ("empty.png", "corrupt.png")]
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [r[0] for r in rows] == [str(p) for p in good]  # input order: sorted, depth first
    assert all(r[1].strip() and float(r[2]) < 0 for r in rows)
    *warnings, summary, error = res.stderr.splitlines()
    assert summary.startswith("captioned 4 of 6 images in ")  # stderr is not a terminal: a closing line
    assert len(warnings) == 2 and all(w.startswith("mmfuse: warning: ") and w.endswith("(skipped)") for w in warnings)
    assert str(photos / "empty.png") in warnings[0] and str(photos / "sub/corrupt.png") in warnings[1]
    assert error == (f"mmfuse: error: 2 of 6 inputs could not be captioned: {photos / 'empty.png'}, "
                     f"{photos / 'sub/corrupt.png'}")


def test_stdin_patterns_and_files_keep_input_order(trained: Path, photos: Path) -> None:
    listed = f"{photos / 'sub/c.png'}\n\n{photos / 'a.png'}\n"
    res = _caption(trained, str(photos / "b.JPG"), "-", str(photos / "sub" / "**" / "d*.png"), input=listed)
    assert res.exit_code == 0, res.stderr
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == \
        [str(photos / n) for n in ["b.JPG", "sub/c.png", "a.png", "sub/deeper/d.png"]]
    res = _caption(trained, str(photos / "*.gif"), str(photos / "missing.png"), str(photos / "a.png"))
    assert res.exit_code == 1
    assert "no file matches" in res.stderr and "image not found" in res.stderr
    assert res.stdout.count("\n") == 1


def test_formats_carry_the_same_captions(trained: Path, photos: Path) -> None:
    images = [str(photos / "a.png"), str(photos / "sub/c.png")]
    tsv = [line.split("\t") for line in _caption(trained, *images, "--beam-size", "3").stdout.splitlines()]
    text = _caption(trained, *images, "--beam-size", "3", "--format", "text").stdout.splitlines()
    lines = _caption(trained, *images, "--beam-size", "3", "--format", "jsonl").stdout.splitlines()
    array = json.loads(_caption(trained, *images, "--beam-size", "3", "--format", "json").stdout)
    records = [json.loads(line) for line in lines]
    assert records == array
    assert [r[1] for r in tsv] == text == [r["caption"] for r in records]
    assert [r["path"] for r in records] == images
    assert [float(r[2]) for r in tsv] == pytest.approx([r["score"] for r in records], abs=1e-4)
    assert records[0]["decoding"]["strategy"] == "beam" and records[0]["decoding"]["beam_size"] == 3
    empty = _caption(trained, str(photos / "empty.png"), "--format", "json")
    assert empty.exit_code == 1 and json.loads(empty.stdout) == []  # still valid JSON


def test_n_best_lists_and_sampling(trained: Path, photos: Path) -> None:
    image = str(photos / "a.png")
    record = json.loads(_caption(trained, image, "--beam-size", "4", "--n-best", "3", "--format", "jsonl").stdout)
    assert len(record["captions"]) == 3 == len(set(record["captions"]))
    assert record["scores"] == sorted(record["scores"], reverse=True) and record["caption"] == record["captions"][0]
    rows = _caption(trained, image, "--beam-size", "4", "--n-best", "3").stdout.splitlines()
    assert [r.split("\t")[1] for r in rows] == record["captions"]
    draws = [_caption(trained, image, "--sample", "--n-best", "4", "--seed", s, "--temperature", "2", "--format", "jsonl")
             for s in ("1", "1", "2")]
    first, again, other = (json.loads(d.stdout)["captions"] for d in draws)
    assert first == again and first != other and draws[0].exit_code == 0


def test_contradictory_decoding_flags_fail_before_output(trained: Path, photos: Path) -> None:
    res = _caption(trained, str(photos / "a.png"), "--n-best", "3")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.strip() == "mmfuse: error: --n-best 3 needs --beam-size >= 3 (or --sample for 3 draws per image)"
    res = _caption(trained, str(photos / "a.png"), "--format", "xml")
    assert res.exit_code == 1 and "--format must be tsv, text, jsonl or json" in res.stderr


@pytest.mark.slow
def test_find_pipe_into_head(trained: Path, photos: Path) -> None:
    """The README's shell pipeline, for real: find | mmfuse caption - | head; head closing the pipe early is fine."""
    for i in range(40):
        shutil.copy(photos / "a.png", photos / "sub" / f"copy{i:02d}.png")
    mmfuse = f"{sys.executable} -m mmfuse"
    script = (f"set -o pipefail; find {photos} -name '*.png' -size +0 ! -name corrupt.png | sort | "
              f"{mmfuse} caption - --run r -w {trained} --format jsonl --n-best 2 --beam-size 2 --batch-size 4 | head -n 3")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MMFUSE_WORKSPACE": str(trained)})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3 and records[0]["path"] == str(photos / "a.png")


def test_a_closed_pipe_ends_the_output_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    items = (Captioned(Path(f"{i}.png"), [(["a", "red", "circle"], -1.0)]) for i in range(3))
    with os.fdopen(write_end, "w") as out:
        summary = write_results(items, DecodeConfig(), "tsv", out, lambda message: None)
    assert summary.paths == [] and summary.total == 1  # stopped at the first write


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace of its own with run 'att' (attention fusion, 1 epoch on a tiny shapes set)."""
    return tiny_run(tmp_path_factory, "shapes", "tiny", "att", "--fusion", "attention", "--epochs", "1")


def test_attention_heat_maps(attention_run: Path, photos: Path, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    images = [str(photos / "a.png"), str(photos / "sub/c.png"), str(photos / "sub/deeper/d.png")]
    res = invoke("caption", *images, "--run", "att", "-w", str(attention_run), "--attention-map", str(maps),
                 "--format", "jsonl", "--max-length", "8")
    assert res.exit_code == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(p.name for p in maps.iterdir()) == ["a.png", "c.png", "d.png"]
    for record in records:
        figure = Image.open(record["attention_map"]).convert("RGB")
        panels = len(record["caption"].split()) + 1  # the image, then one panel per word
        columns = min(6, panels)
        assert figure.size == (columns * PANEL, -(-panels // columns) * (PANEL + LABEL))
        image_panel = figure.crop((0, LABEL, PANEL, LABEL + PANEL))
        word_panel = figure.crop((PANEL, LABEL, 2 * PANEL, LABEL + PANEL))
        assert ImageStat.Stat(word_panel.convert("L")).mean[0] < ImageStat.Stat(image_panel.convert("L")).mean[0]


def test_heat_map_lights_the_attended_cell(tmp_path: Path) -> None:
    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), "white").save(white)
    figure = attention_figure(white, ["circle"], torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # bottom-left of a 2x2 grid
    panel = figure.crop((PANEL, LABEL, 2 * PANEL, LABEL + PANEL)).convert("L")
    quarter = PANEL // 4
    assert panel.getpixel((quarter, 3 * quarter)) >= 245  # the attended cell keeps its brightness (bilinear edges aside)
    assert panel.getpixel((3 * quarter, quarter)) <= 56  # the others keep 20 %


def test_heat_maps_into_a_file_are_refused(attention_run: Path, photos: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "maps"
    blocker.write_text("a file, not a directory")
    res = invoke("caption", str(photos / "a.png"), "--run", "att", "-w", str(attention_run), "--attention-map", str(blocker))
    assert res.exit_code == 1 and res.stdout == "" and "Traceback" not in res.output
    assert res.stderr.startswith(f"mmfuse: error: cannot write attention maps into {blocker}: ")


def test_heat_maps_need_an_attention_fusion(trained: Path, photos: Path, tmp_path: Path) -> None:
    res = _caption(trained, str(photos / "a.png"), "--attention-map", str(tmp_path / "maps"))
    assert res.exit_code == 1 and res.stdout == "" and not (tmp_path / "maps").exists()
    assert "--attention-map needs a run with attention over the image (--fusion attention)" in res.stderr


def test_evaluate_takes_the_decoding_options(trained: Path) -> None:
    res = invoke("evaluate", "--run", "r", "-w", str(trained), "--no-meteor", "--json", "--beam-size", "3",
                 "--length-penalty", "0.6", "--no-repeat-ngram", "2", "--min-length", "2")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert {k: report["decode"][k] for k in ("beam_size", "length_penalty", "no_repeat_ngram", "min_length")} == \
        {"beam_size": 3, "length_penalty": 0.6, "no_repeat_ngram": 2, "min_length": 2}
    assert all(len(i["caption"].split()) >= 2 for i in report["images"])
