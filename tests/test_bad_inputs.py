"""The bad-input suite: each case runs one command on something wrong (an image, a caption file,
an option, a workspace state) and checks the exit status, that stderr is one clear line naming
the problem (the file, the option, the line), that there is no traceback, and that the workspace
is unchanged or only gained what was valid. Images that are unusual but fine (1x1, 16-bit, CMYK,
animated GIF) must simply work."""

from __future__ import annotations

import ctypes
import json
import os
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


def _one_error_line_of(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
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


@pytest.mark.parametrize("case", sorted(READ_ONLY))
def test_a_read_only_workspace_is_one_line_and_stays_as_it_was(case: str, ws: Path) -> None:
    args, needle = READ_ONLY[case]
    _read_only(ws)
    before = _snapshot(ws)
    proc = _mmfuse(ws, args, _without_root_override)
    _one_error_line_of(proc, "Permission denied", str(ws / needle), "--workspace")
    assert _snapshot(ws) == before


def test_a_read_only_workspace_still_captions(ws: Path) -> None:
    image = next((ws / "datasets/tiny/images/test").glob("*.png"))
    _read_only(ws)
    proc = _mmfuse(ws, ["caption", str(image), "--run", "r"], _without_root_override)
    assert proc.returncode == 0, proc.stderr
    path, caption, _score = proc.stdout.rstrip("\n").split("\t")
    assert path == str(image) and caption


def test_a_full_disk_while_preparing_data_leaves_the_workspace_as_it_was(ws: Path) -> None:
    before = _snapshot(ws)
    proc = _mmfuse(ws, ["prepare-data", "shapes", "--name", "tiny", "--train-images", "400", "--val-images", "8",
                        "--test-images", "8"], _file_size_limit(64_000))
    _one_error_line_of(proc, "File too large", ".jsonl", "ulimit")
    assert _snapshot(ws) == before  # the old data set 'tiny' is intact, no staging directory, no lock


def test_a_full_disk_before_the_first_checkpoint_leaves_no_run_behind(ws: Path) -> None:
    before = _snapshot(ws)
    proc = _mmfuse(ws, ["train", "--data", "tiny", "--run", "r2", "--epochs", "2", "--feature-dim", "32",
                        "--embed-dim", "16", "--hidden-dim", "32"], _file_size_limit(64_000))
    _one_error_line_of(proc, "File too large", str(ws / "runs/r2"))
    assert _snapshot(ws) == before and not (ws / "runs/r2").exists()  # nothing to resume: no half-made run
