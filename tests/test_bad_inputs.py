"""The bad-input suite: each case runs one command on something wrong (an image, a caption file,
an option, a workspace state) and checks the exit status, that stderr is one clear line naming
the problem (the file, the option, the line), that there is no traceback, and that the workspace
is unchanged or only gained what was valid. Images that are unusual but fine (1x1, 16-bit, CMYK,
animated GIF) must simply work."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY, invoke


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def _one_error_line(res, *needles: str) -> None:
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("mmfuse: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def ws(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained workspace (data set 'tiny', run 'r')."""
    copy = tmp_path / "ws"
    shutil.copytree(trained, copy)
    return copy


# --- images given to `caption` ------------------------------------------------------------------

def _zero_bytes(path: Path) -> Path:
    path = path.with_suffix(".png")
    path.write_bytes(b"")
    return path


def _truncated_jpeg(path: Path) -> Path:
    path = path.with_suffix(".jpg")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _text_named_jpg(path: Path) -> Path:
    path = path.with_suffix(".jpg")
    path.write_text("a caption file, not a picture\n")
    return path


def _decompression_bomb(path: Path) -> Path:
    """A PNG whose header claims 100,000 x 100,000 pixels (10^10): Pillow refuses it before decoding."""
    path = path.with_suffix(".png")
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the IHDR chunk's CRC
    path.write_bytes(bytes(data))
    return path


BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "zero bytes": (_zero_bytes, "not a readable image file"),
    "truncated jpeg": (_truncated_jpeg, "Truncated File Read"),
    "text file named .jpg": (_text_named_jpg, "not a readable image file"),
    "decompression bomb": (_decompression_bomb, "too large (decompression bomb guard)"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_bad_image_is_one_line_naming_it(case: str, ws: Path, tmp_path: Path) -> None:
    make, needle = BAD_IMAGES[case]
    image = make(tmp_path / "bad")
    before = _snapshot(ws)
    res = invoke("caption", str(image), "--run", "r", "-w", str(ws))
    _one_error_line(res, str(image), needle)
    assert res.stdout == "" and _snapshot(ws) == before


def _one_pixel(path: Path) -> Path:
    Image.new("RGB", (1, 1), (10, 200, 10)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _sixteen_bit(path: Path) -> Path:
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def _cmyk(path: Path) -> Path:
    Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(path.with_suffix(".jpg"))
    return path.with_suffix(".jpg")


def _animated_gif(path: Path) -> Path:
    frames = [Image.new("P", (64, 64), c) for c in (1, 2, 3)]
    frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=50)
    return path.with_suffix(".gif")


def _huge_dimensions(path: Path) -> Path:
    """8,000 x 6,000 pixels (48 million: large, yet under Pillow's decompression-bomb limit)."""
    Image.new("RGB", (8000, 6000), (30, 30, 220)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.mark.slow
@pytest.mark.parametrize("make", [_one_pixel, _sixteen_bit, _cmyk, _animated_gif, _huge_dimensions],
                         ids=lambda f: f.__name__[1:])
def test_unusual_but_valid_images_are_captioned(make: Callable[[Path], Path], ws: Path, tmp_path: Path) -> None:
    image = make(tmp_path / "odd")
    res = invoke("caption", str(image), "--run", "r", "--format", "jsonl", "-w", str(ws))
    assert res.exit_code == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["path"] == str(image) and row["caption"]


# --- caption files given to `prepare-data` ------------------------------------------------------

def _picture(folder: Path, name: str = "a.png") -> None:
    Image.new("RGB", (32, 32), (0, 0, 255)).save(folder / name)


CAPTION_FILES: list[tuple[str, bytes, str]] = [
    ("c.jsonl", b'{"image": "a.png", "captions": ["x"]}\n{"image": "a.png", "captions": [\n', "c.jsonl:2: invalid JSON"),
    ("c.jsonl", b'{"captions": ["a red square"]}\n', "c.jsonl:1: no 'image'"),
    ("c.csv", b"picture,text\na.png,hello\n", "c.csv:1: the header must name the columns 'image' and 'caption'"),
    ("c.csv", "image,caption\na.png,caf\u00e9 au lait\n".encode("latin-1"), "c.csv"),  # not UTF-8
    ("c.csv", b"image,caption\na.png,\na.png,   \n", "no non-empty caption"),  # only empty captions
    ("c.csv", b"image,caption\nmissing.png,a red square\n", "missing.png"),  # image ids without images
    ("c.csv", b"image,caption,split\na.png,hello,dev\n", "c.csv:2: split 'dev' is not one of train, val, test"),
    ("c.txt", b"a.png a red square\n", "expected a .csv or .jsonl file"),
]


@pytest.mark.parametrize("name,content,needle", CAPTION_FILES, ids=[n for _, _, n in CAPTION_FILES])
def test_a_bad_caption_file_is_one_line_naming_file_and_line(name: str, content: bytes, needle: str, tmp_path: Path,
                                                             workspace: Path) -> None:
    _picture(tmp_path)
    (tmp_path / name).write_bytes(content)
    res = invoke("prepare-data", "folder", "--name", "mine", "--images", str(tmp_path), "--captions", str(tmp_path / name))
    _one_error_line(res, needle)
    assert not (workspace / "datasets" / "mine").exists()
    assert [p.name for p in (workspace / "datasets").iterdir()] == [] if (workspace / "datasets").exists() else True


def test_duplicate_image_ids_in_coco_annotations_are_one_line(tmp_path: Path, workspace: Path) -> None:
    _picture(tmp_path, "x.jpg")
    annotations = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 1, "file_name": "y.jpg"}],
                   "annotations": [{"image_id": 1, "caption": "a blue square"}]}
    (tmp_path / "captions_train2017.json").write_text(json.dumps(annotations))
    res = invoke("prepare-data", "coco", "--annotations", str(tmp_path / "captions_train2017.json"), "--images", str(tmp_path))
    _one_error_line(res, "captions_train2017.json: image id 1 is listed twice (x.jpg, y.jpg)")
    assert not (workspace / "datasets" / "coco").exists()


# --- options -----------------------------------------------------------------------------------

BAD_OPTIONS: list[tuple[list[str], str]] = [
    (["train", "--data", "tiny", "--batch-size", "0"], "batch_size (--batch-size) must be >= 1, got 0"),
    (["train", "--data", "tiny", "--epochs", "-2"], "epochs (--epochs) must be >= 1, got -2"),
    (["train", "--data", "tiny", "--lr", "0"], "lr must be > 0"),
    (["train", "--data", "tiny", "--decoder", "xlstm"], "unknown decoder 'xlstm'"),
    (["train", "--data", "tiny", "--encoder", "small_cnn", "--pretrained"], "the small CNN trains from scratch"),
    (["train", "--data", "tiny", "--fusion", "late"], "late"),  # decision-level fusion cannot caption
    (["train", "--data", "tiny", "--fusion", "attention", "--decoder", "transformer"], "attention"),
    (["caption", "x.png", "--run", "r", "--beam-size", "0"], "beam"),
    (["caption", "x.png", "--run", "r", "--top-p", "1.5"], "top"),
    (["caption", "x.png", "--run", "r", "--sample", "--beam-size", "3"], "sampl"),
    (["evaluate", "--run", "r", "--split", "dev"], "dev"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=[" ".join(a[:3]) + " " + a[-1] for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_naming_it(args: list[str], needle: str, ws: Path) -> None:
    before = _snapshot(ws)
    res = invoke(*args, "-w", str(ws))
    _one_error_line(res, needle)
    assert _snapshot(ws) == before


# --- workspace states --------------------------------------------------------------------------

def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


STATES: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "missing run": (lambda ws: None, ["evaluate", "--run", "ghost"], "no run 'ghost'"),
    "run without weights": (lambda ws: [(ws / "runs/r" / f).unlink() for f in ("best.safetensors", "last.safetensors")],
                            ["evaluate", "--run", "r"], "no best weights"),
    "data set from a newer mmfuse": (lambda ws: _edit_json(ws / "datasets/tiny/manifest.json", format_version=99),
                                     ["train", "--data", "tiny", "--run", "n"], "newer"),
    "run config from a newer mmfuse": (lambda ws: _edit_json(ws / "runs/r/config.json", format_version=99),
                                       ["evaluate", "--run", "r"], "newer"),
    "damaged manifest": (lambda ws: (ws / "datasets/tiny/manifest.json").write_text("{oops"),
                         ["train", "--data", "tiny", "--run", "n"], "manifest.json"),
    "damaged vocabulary": (lambda ws: (ws / "runs/r/vocab.json").write_text("[1, 2"), ["evaluate", "--run", "r"], "vocab.json"),
    "damaged weights": (lambda ws: (ws / "runs/r/best.safetensors").write_bytes(b"\x00" * 64),
                        ["evaluate", "--run", "r"], "best.safetensors"),
    "workspace path is a file": (lambda ws: None, ["prepare-data", "shapes", "--name", "x", *TINY, "-w", "FILE"], "FILE"),
}


@pytest.mark.parametrize("case", sorted(STATES))
def test_a_bad_workspace_state_is_one_line(case: str, ws: Path, tmp_path: Path) -> None:
    damage, args, needle = STATES[case]
    damage(ws)
    before = _snapshot(ws)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = [str(blocker) if a == "FILE" else a for a in args]
    res = invoke(*args, *([] if "-w" in args else ["-w", str(ws)]))
    _one_error_line(res, str(blocker) if needle == "FILE" else needle)
    assert _snapshot(ws) == before


# --- a workspace that cannot be written: read-only, or a full disk ---------------------------------
# These run mmfuse in a subprocess. Root may write anywhere whatever the permissions, so as root the
# subprocess first gives up the capabilities that allow that (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH);
# a full disk is simulated with a file-size limit (RLIMIT_FSIZE: a write past it fails with EFBIG, the
# way a write to a full disk fails with ENOSPC).

_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


def _without_root_override() -> None:
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed: cannot test a read-only workspace as root")


def _file_size_limit(nbytes: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def _mmfuse(ws: Path, args: list[str], preexec: Callable[[], None]) -> subprocess.CompletedProcess:
    env = {**os.environ, "MMFUSE_WORKSPACE": str(ws)}
    env.pop("MMFUSE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mmfuse", *args], env=env, preexec_fn=preexec, capture_output=True,
                          text=True, timeout=300)


PROGRESS_LINE = re.compile(r"[a-z ]+: \d+(/\d+)?  \d+:\d\d elapsed")  # a log's plain progress (stderr not a tty)


def _one_error_line_of(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """One error line; a failure found mid-work may follow the progress lines a log gets."""
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("mmfuse: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


READ_ONLY: dict[str, tuple[list[str], str]] = {
    "prepare-data": (["prepare-data", "shapes", "--name", "new", *TINY], "datasets/.new.lock"),
    "train": (["train", "--data", "tiny", "--run", "r2", "--epochs", "1"], "runs/.r2.lock"),
    "evaluate": (["evaluate", "--run", "r", "--no-meteor"], "runs/r/.write-check"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(READ_ONLY))
def test_a_read_only_workspace_is_one_line_and_stays_as_it_was(case: str, ws: Path) -> None:
    args, needle = READ_ONLY[case]
    _read_only(ws)
    before = _snapshot(ws)
    proc = _mmfuse(ws, args, _without_root_override)
    _one_error_line_of(proc, "Permission denied", str(ws / needle), "--workspace")
    assert _snapshot(ws) == before


@pytest.mark.slow
def test_a_read_only_workspace_still_captions(ws: Path) -> None:
    image = next((ws / "datasets/tiny/images/test").glob("*.png"))
    _read_only(ws)
    proc = _mmfuse(ws, ["caption", str(image), "--run", "r"], _without_root_override)
    assert proc.returncode == 0, proc.stderr
    path, caption, _score = proc.stdout.rstrip("\n").split("\t")
    assert path == str(image) and caption


@pytest.mark.slow
def test_a_full_disk_while_preparing_data_leaves_the_workspace_as_it_was(ws: Path) -> None:
    before = _snapshot(ws)
    proc = _mmfuse(ws, ["prepare-data", "shapes", "--name", "tiny", "--train-images", "400", "--val-images", "8",
                        "--test-images", "8"], _file_size_limit(64_000))
    _one_error_line_of(proc, "File too large", ".jsonl", "ulimit")
    assert _snapshot(ws) == before  # the old data set 'tiny' is intact, no staging directory, no lock


@pytest.mark.slow
def test_a_full_disk_before_the_first_checkpoint_leaves_no_run_behind(ws: Path) -> None:
    before = _snapshot(ws)
    proc = _mmfuse(ws, ["train", "--data", "tiny", "--run", "r2", "--epochs", "2", "--feature-dim", "32",
                        "--embed-dim", "16", "--hidden-dim", "32"], _file_size_limit(64_000))
    _one_error_line_of(proc, "File too large", str(ws / "runs/r2"))
    assert _snapshot(ws) == before and not (ws / "runs/r2").exists()  # nothing to resume: no half-made run


# === second round (issue 28): hangs, unparseable output, unchecked values, misleading messages, ====
# === conflicting options, one bad input among good ones ===========================================

def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _subprocess(ws: Path, args: list[str], stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """mmfuse in a subprocess with a timeout: a command that would block forever fails the test."""
    env = {**os.environ, "MMFUSE_WORKSPACE": str(ws)}
    env.pop("MMFUSE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mmfuse", *args], env=env, input=stdin, capture_output=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_named_pipe_given_to_caption_is_refused_at_once(ws: Path, tmp_path: Path) -> None:
    pipe = _fifo(tmp_path / "pipe.png")
    proc = _subprocess(ws, ["caption", str(pipe), "--run", "r"], timeout=60)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == [f"mmfuse: error: not an image file (a named pipe): {pipe}"]


@pytest.mark.slow
def test_a_named_pipe_in_a_directory_or_on_stdin_is_one_skipped_input(ws: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    good = _one_pixel(folder / "a")
    pipe = _fifo(folder / "b.png")
    for args, stdin in ((["caption", str(folder)], None), (["caption", "-"], f"{good}\n{pipe}\n".encode())):
        proc = _subprocess(ws, [*args, "--run", "r"], stdin=stdin, timeout=60)
        assert proc.returncode == 1
        assert proc.stdout.decode().split("\t")[0] == str(good)
        assert f"mmfuse: warning: not an image file (a named pipe): {pipe} (skipped)" in proc.stderr.decode()


@pytest.mark.slow
def test_predict_and_config_and_pairs_refuse_a_named_pipe(trained_qa: Path, tmp_path: Path) -> None:
    pipe = _fifo(tmp_path / "p")
    image = next((trained_qa / "datasets/qa/images/test").glob("*.png"))
    cases = [(["predict", str(pipe), "--text", "is it red ?", "--run", "q"], "not an image file (a named pipe)"),
             (["predict", "--pairs", str(pipe), "--run", "q"], "not a pairs file (a named pipe)"),
             (["train", "--data", "qa", "--config", str(pipe)], "not a config file file (a named pipe)"),
             (["predict", str(image), "--text", "x", "--run", "q", "--batch-size", "0"], "--batch-size")]
    for args, needle in cases:
        proc = _subprocess(trained_qa, args, timeout=60)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0], (args, lines)


@pytest.mark.slow
def test_a_caption_file_row_naming_a_named_pipe_skips_that_image(tmp_path: Path, workspace: Path) -> None:
    for name in "abcd":
        _picture(tmp_path, f"{name}.png")
    _fifo(tmp_path / "e.png")
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"{n}.png,a blue square\n" for n in "abcde"))
    proc = _subprocess(workspace, ["prepare-data", "folder", "--name", "mine", "--images", str(tmp_path), "--captions",
                                   str(tmp_path / "c.csv")], timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workspace / "datasets/mine/report.json").read_text())
    assert [s["problem"] for s in report["skipped"]] == [f"not an image file (a named pipe): {tmp_path / 'e.png'}"]


@pytest.mark.parametrize("seed", range(6))
def test_unreadable_images_and_empty_captions_never_empty_a_split(seed: int, tmp_path: Path, workspace: Path) -> None:
    """3 good images, 1 unreadable, 1 with only empty captions: the ratio split is made among the 3
    good ones, so each split gets one whatever the seed (before: 'no images in split ...')."""
    for name in "abc":
        _picture(tmp_path, f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    _picture(tmp_path, "empty.png")
    rows = "".join(f"{n}.png,a blue square\n" for n in ("a", "b", "c", "bad")) + 'empty.png,"  "\n'
    (tmp_path / "c.csv").write_text("image,caption\n" + rows)
    res = invoke("prepare-data", "folder", "--name", "mine", "--images", str(tmp_path), "--captions",
                 str(tmp_path / "c.csv"), "--seed", str(seed))
    assert res.exit_code == 0, res.stderr
    splits = json.loads((workspace / "datasets/mine/manifest.json").read_text())["splits"]
    assert {s: c["images"] for s, c in splits.items()} == {"train": 1, "val": 1, "test": 1}
    skipped = json.loads((workspace / "datasets/mine/report.json").read_text())["skipped"]
    assert sorted(Path(s["image"]).name for s in skipped) == ["bad.png", "empty.png"]


def _unescape(field: str) -> bytes:
    """Undo the TSV escapes (the README's rule): \\\\, \\t, \\n, \\r, \\xHH (a byte), \\uHHHH."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] != "\\":
            out += field[i].encode()
            i += 1
            continue
        kind = field[i + 1]
        if kind in "\\tnr":
            out += {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}[kind]
            i += 2
        elif kind == "x":
            out.append(int(field[i + 2:i + 4], 16))
            i += 4
        else:
            out += chr(int(field[i + 2:i + 6], 16)).encode()
            i += 6
    return bytes(out)


@pytest.mark.slow
def test_file_names_with_tabs_newlines_and_invalid_utf8_stay_parseable(ws: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"tab\there.png", b"new\nline.png", b"back\\slash.png", b"latin\xe9.png"]
    for name in names:
        Image.new("RGB", (8, 8), (200, 0, 0)).save(os.fsdecode(bytes(folder).__class__(os.fsencode(folder)) + b"/" + name))
    proc = _subprocess(ws, ["caption", str(folder), "--run", "r"])
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.decode("utf-8").splitlines()  # valid UTF-8, one row per image
    assert len(rows) == 4 and all(len(r.split("\t")) == 3 for r in rows)
    assert sorted(os.path.basename(_unescape(r.split("\t")[0])) for r in rows) == sorted(names)
    for fmt in ("jsonl", "json"):
        proc = _subprocess(ws, ["caption", str(folder), "--run", "r", "--format", fmt])
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout.decode("utf-8")
        items = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
        exact = [base64.b64decode(i["path_bytes"]) if "path_bytes" in i else i["path"].encode() for i in items]
        assert sorted(os.path.basename(p) for p in exact) == sorted(names)
        assert ["path_bytes" in i for i in items].count(True) == 1  # only the name that is not UTF-8


@pytest.mark.slow
def test_predict_output_stays_parseable_and_an_invalid_byte_in_pairs_is_one_line(trained_qa: Path, tmp_path: Path) -> None:
    image = tmp_path / "a\tb.png"
    Image.new("RGB", (16, 16), (0, 0, 200)).save(image)
    pairs = json.dumps({"image": str(image), "text": "is the circle red ?"}).encode() + b"\n"
    proc = _subprocess(trained_qa, ["predict", "--pairs", "-", "--run", "q"], stdin=pairs)
    assert proc.returncode == 0, proc.stderr
    path, question, label, _ = proc.stdout.decode().rstrip("\n").split("\t")
    assert _unescape(path) == os.fsencode(image) and question == "is the circle red ?" and label in ("yes", "no")
    proc = _subprocess(trained_qa, ["predict", "--pairs", "-", "--run", "q"], stdin=pairs + b'{"image": "x", "text": "\xff"}\n')
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().splitlines() == ["mmfuse: error: standard input:2: not UTF-8 text (invalid start byte at byte 24)"]


VALUES: list[tuple[list[str], str]] = [
    (["train", "--data", "tiny", "--lr", "inf"], "lr (--lr) must be a finite number, got inf"),
    (["train", "--data", "tiny", "--lr", "nan"], "lr (--lr) must be a finite number, got nan"),
    (["train", "--data", "tiny", "--grad-clip", "inf"], "grad_clip (--grad-clip) must be a finite number"),
    (["train", "--data", "tiny", "--weight-decay", "nan"], "weight_decay (--weight-decay) must be a finite number"),
    (["train", "--data", "tiny", "--dropout", "nan"], "dropout (--dropout) must be a finite number"),
    (["train", "--data", "tiny", "--seed", str(2**70)], "seed (--seed) must be between 0 and"),
    (["train", "--data", "tiny", "--seed", "-1"], "seed (--seed) must be between 0 and"),
    (["train", "--data", "tiny", "--hidden-dim", str(10**9)], "hidden_dim (--hidden-dim) must be at most 65536"),
    (["train", "--data", "tiny", "--batch-size", str(10**12)], "batch_size (--batch-size) must be at most"),
    (["caption", "x.png", "--run", "r", "--length-penalty", "nan"], "length_penalty (--length-penalty) must be a finite"),
    (["caption", "x.png", "--run", "r", "--sample", "--temperature", "inf"], "temperature (--temperature) must be a finite"),
    (["caption", "x.png", "--run", "r", "--diverse-groups", "2", "--beam-size", "4", "--diversity", "nan"], "diversity"),
    (["prepare-data", "shapes", "--name", "x", "--seed", str(2**64)], "seed (--seed) must be between 0 and"),
    # conflicting options
    (["caption", "x.png", "--run", "r", "--top-p", "0.9"], "--top-p shapes sampling; add --sample"),
    (["caption", "x.png", "--run", "r", "--temperature", "0.7", "--top-k", "5"], "--temperature, --top-k shape sampling"),
    (["caption", "x.png", "--run", "r", "--diversity", "0.9"], "--diversity applies to diverse beam search"),
    (["caption", "x.png", "--run", "r", "--json", "--format", "tsv"], "--json means --format jsonl; it conflicts with --format tsv"),
    (["caption", "x.png", "--run", "r", "--no-repeat-ngram", "1", "--min-length", "30"],
     "--min-length 30 cannot be reached with --no-repeat-ngram 1"),
    (["evaluate", "--run", "r", "--no-repeat-ngram", "1", "--min-length", "30"], "cannot be reached"),
]


@pytest.mark.parametrize("args,needle", VALUES, ids=[" ".join(a[-2:]) for a, _ in VALUES])
def test_a_value_out_of_range_or_a_conflict_is_one_line_naming_it(args: list[str], needle: str, ws: Path) -> None:
    before = _snapshot(ws)
    res = invoke(*args, "-w", str(ws))
    _one_error_line(res, needle)
    assert _snapshot(ws) == before


def _jsonl_case(line: dict) -> bytes:
    return (json.dumps(line) + "\n").encode()


ROW_VALUES: list[tuple[str, bytes, str]] = [
    ("c.jsonl", _jsonl_case({"image": 5, "captions": ["x"]}), "c.jsonl:1: 'image' must be a string, got int 5"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "captions": [None]}), "c.jsonl:1: 'captions' must be a string, got null"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "caption": {"x": 1}}), "c.jsonl:1: 'caption' must be a string, got object"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "text": "q", "label": 5}), "c.jsonl:1: 'label' must be a string, got int"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "text": ["q"], "label": "yes"}), "c.jsonl:1: 'text' must be a string, got array"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "captions": ["x"], "split": 1}), "c.jsonl:1: 'split' must be a string"),
    ("c.jsonl", _jsonl_case({"image": "a.png", "captions": ["x" * 1_000_000]}),
     "c.jsonl:1: 'captions' is 1,000,000 characters long; at most 10,000"),
    ("c.csv", b"image,caption\na.png," + b"x" * 1_000_000 + b"\n", "c.csv:2: 'caption' is 1,000,000 characters long; at most 10,000"),
]


@pytest.mark.parametrize("name,content,needle", ROW_VALUES, ids=[n for _, _, n in ROW_VALUES])
def test_a_caption_file_value_of_the_wrong_type_or_size_is_one_line(name: str, content: bytes, needle: str,
                                                                    tmp_path: Path, workspace: Path) -> None:
    _picture(tmp_path)
    (tmp_path / name).write_bytes(content)
    res = invoke("prepare-data", "folder", "--name", "mine", "--images", str(tmp_path), "--captions", str(tmp_path / name))
    _one_error_line(res, needle)
    assert not (workspace / "datasets" / "mine").exists()


def _retype_weights(ws: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = ws / "runs/r/best.safetensors"
    tensors = load_file(path)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path)


def _other_architecture(ws: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = ws / "runs/r/best.safetensors"
    save_file({k.replace("decoder.", "decoder.x."): v for k, v in load_file(path).items()}, path)


STATES_2: dict[str, tuple[Callable[[Path], None], list[str], str]] = {
    "run path is a file": (lambda ws: (shutil.rmtree(ws / "runs/r"), (ws / "runs/r").write_text("x")),
                           ["evaluate", "--run", "r"], "runs/r is a file, not a run directory"),
    "data set path is a file": (lambda ws: (shutil.rmtree(ws / "datasets/tiny"), (ws / "datasets/tiny").write_text("x")),
                                ["train", "--data", "tiny", "--run", "n"], "datasets/tiny is a file, not a data set directory"),
    "run path is a link loop": (lambda ws: (shutil.rmtree(ws / "runs/r"), os.symlink(ws / "runs/r", ws / "runs/r")),
                                ["evaluate", "--run", "r"], "is a symbolic link loop, not a run directory"),
    "manifest task of the wrong type": (lambda ws: _edit_json(ws / "datasets/tiny/manifest.json", task=5),
                                        ["train", "--data", "tiny", "--run", "n"], "'task' must be one of caption, classify, answer, got 5"),
    "manifest image size of the wrong type": (lambda ws: _edit_json(ws / "datasets/tiny/manifest.json", image_size="big"),
                                              ["train", "--data", "tiny", "--run", "n"], "'image_size' must be null or"),
    "absurd size in a run config": (lambda ws: _edit_json(ws / "runs/r/config.json", model={
        **json.loads((ws / "runs/r/config.json").read_text())["model"], "hidden_dim": 10**12}),
        ["evaluate", "--run", "r"], "hidden_dim (--hidden-dim) must be at most 65536"),
    "null where a run config expects text": (lambda ws: _edit_json(ws / "runs/r/config.json", model={
        **json.loads((ws / "runs/r/config.json").read_text())["model"], "fusion": None}),
        ["evaluate", "--run", "r"], "run config.model.fusion: expected str, got NoneType"),
    "weights of another dtype": (_retype_weights, ["evaluate", "--run", "r"], "other dtype: "),
    "weights of another architecture": (_other_architecture, ["evaluate", "--run", "r"], "missing: decoder."),
    "vocabulary with a bad min_count": (lambda ws: _edit_json(ws / "runs/r/vocab.json", min_count=[1]),
                                        ["evaluate", "--run", "r"], "'min_count' must be a whole number"),
    "split record with a number for a caption": (
        lambda ws: (ws / "datasets/tiny/test.jsonl").write_text(json.dumps(
            {"id": "t", "image": "images/test/x.png", "captions": [5], "tokens": [["x"]]}) + "\n"),
        ["evaluate", "--run", "r"], "test.jsonl:1: malformed record (TypeError: 'captions' must be a list of strings)"),
    "resume metadata missing a field": (lambda ws: _drop_progress_field(ws), ["train", "--run", "r", "--resume"],
                                        "its metadata has no 'progress.best'"),
    "workspace is a symbolic link loop": (lambda ws: None, ["evaluate", "--run", "r", "-w", "LOOP"], "is a symbolic link loop"),
}


def _drop_progress_field(ws: Path) -> None:
    from unittest import mock

    from safetensors.torch import load_file, save_file

    from mmfuse.models.checkpoint import read_metadata
    from mmfuse.train.loop import _Loop

    with mock.patch.object(_Loop, "_stop_requested", return_value=True):  # as if Ctrl-C came in epoch 1 of 2
        res = invoke("train", "--data", "tiny", "--run", "r", "--epochs", "2", "--overwrite", "--batch-size", "16",
                     "--feature-dim", "32", "--embed-dim", "16", "--hidden-dim", "32", "-w", str(ws))
    assert res.exit_code == 130, res.stderr
    path = ws / "runs/r/checkpoint.safetensors"
    meta = json.loads(read_metadata(path)["mmfuse"])
    del meta["progress"]["best"]
    meta["progress"]["done"] = False
    save_file(load_file(path), path, metadata={"mmfuse": json.dumps(meta)})


@pytest.mark.parametrize("case", sorted(STATES_2))
def test_a_damaged_or_odd_workspace_value_is_one_line_saying_what_is_wrong(case: str, ws: Path, tmp_path: Path) -> None:
    damage, args, needle = STATES_2[case]
    damage(ws)
    before = _snapshot(ws) if "loop" not in case else {}
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    args = [str(loop) if a == "LOOP" else a for a in args]
    res = invoke(*args, *([] if "-w" in args else ["-w", str(ws)]))
    _one_error_line(res, needle)
    if before:
        assert _snapshot(ws) == before


def test_weights_whose_class_order_differs_from_labels_json_are_refused(trained_qa: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(trained_qa, ws)
    labels = json.loads((ws / "runs/q/labels.json").read_text())
    (ws / "runs/q/labels.json").write_text(json.dumps(labels[::-1]))
    image = next((ws / "datasets/qa/images/test").glob("*.png"))
    res = invoke("predict", str(image), "--text", "is it red ?", "--run", "q", "-w", str(ws))
    _one_error_line(res, "labels.json lists the classes yes, no but the weights best.safetensors were trained for no, yes")


def test_a_pickle_given_as_weights_is_one_line_that_never_suggests_unsafe_loading(ws: Path, tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps({"x": object()}))
    res = invoke("train", "--data", "tiny", "--run", "n", "--encoder", "resnet18", "--weights", str(path), "-w", str(ws))
    _one_error_line(res, "it is a pickle holding more than tensors, which mmfuse refuses to load")
    assert "weights_only" not in res.stderr


def test_a_path_too_long_is_one_bad_input_among_good_ones(ws: Path, tmp_path: Path) -> None:
    good = _one_pixel(tmp_path / "good")
    too_long = tmp_path / ("x" * 300 + ".png")
    res = invoke("caption", str(good), str(too_long), "--run", "r", "-w", str(ws))
    assert res.exit_code == 1 and res.stdout.split("\t")[0] == str(good)
    assert f"cannot open image {too_long}: a name too long for the file system (skipped)" in res.stderr
    assert "Traceback" not in res.output


def test_an_image_past_pillows_warning_size_is_one_line(ws: Path, tmp_path: Path) -> None:
    """A PNG header claiming 10,000 x 10,000 pixels: above Pillow's warning size, below its refusal;
    its warning (several lines) is not printed, and the truncated file is one line."""
    path = tmp_path / "big.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = (10_000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    res = invoke("caption", str(path), "--run", "r", "-w", str(ws))
    _one_error_line(res, f"cannot read image {path}")


def test_training_stops_at_the_first_non_finite_loss_and_saves_nothing_non_finite(ws: Path) -> None:
    from safetensors.torch import load_file

    res = invoke("train", "--data", "tiny", "--run", "boom", "--epochs", "2", "--lr", "1e30", "--grad-clip", "0",
                 "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16", "--batch-size", "8", "-w", str(ws))
    _one_error_line(res, "training stopped: ", "became non-finite", "Lower --lr")
    for path in (ws / "runs").glob("boom/*.safetensors"):
        assert all(bool(t.isfinite().all()) for t in load_file(path).values() if t.is_floating_point()), path


@pytest.mark.slow
def test_a_feature_cache_left_by_a_full_disk_is_restarted(tmp_path: Path) -> None:
    import torchvision

    ws = tmp_path / "ws"
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY, "-w", str(ws)).exit_code == 0
    weights = tmp_path / "r18.pth"
    torch_save = __import__("torch").save
    torch_save(torchvision.models.resnet18().state_dict(), weights)
    args = ["cache-features", "--data", "tiny", "--encoder", "resnet18", "--weights", str(weights), "--workers", "0"]
    proc = _mmfuse(ws, args, _file_size_limit(200_000))  # the grid array (64 x 2 x 2 x 512 fp16) does not fit
    _one_error_line_of(proc, "File too large", "grid.f16")
    proc = _mmfuse(ws, args, lambda: None)  # before: "No such file ... pooled.f16" until the folder was deleted
    assert proc.returncode == 0, proc.stderr
    assert "features of 64 images" in proc.stderr
