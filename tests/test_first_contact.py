"""A newcomer's first ten minutes (issue #29): each test fails without its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, invoke

SMALL = ["--epochs", "1", "--batch-size", "16", "--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16"]
COMMANDS = ["prepare-data", "cache-features", "train", "evaluate", "caption", "ask", "predict", "compare", "train-lm", "list", "show"]


def _copy(trained: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    return ws


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# 1. compare never replaces a run it did not make ------------------------------------------------

@pytest.mark.slow
def test_compare_refuses_to_replace_a_hand_trained_run_and_replaces_its_own(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    assert invoke("train", "--data", "tiny", "--run", "tiny-concat", *SMALL).exit_code == 0
    before = _snapshot(workspace / "runs")
    res = invoke("compare", "--data", "tiny", "--fusion", "sum,concat", "--no-meteor", *SMALL)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "mmfuse: error: run 'tiny-concat' exists and was not made by comparison 'tiny': compare would replace it; "
        "choose another --name, or pass --overwrite to replace it"]
    assert _snapshot(workspace / "runs") == before and not (workspace / "runs" / "tiny-sum").exists()
    res = invoke("compare", "--data", "tiny", "--fusion", "sum", "--name", "mine", "--no-meteor", *SMALL)
    assert res.exit_code == 0, res.stderr
    res = invoke("compare", "--data", "tiny", "--fusion", "sum", "--name", "mine", "--no-meteor", *SMALL)
    assert res.exit_code == 0, res.stderr  # its own run: replaced without a word
    made = {r["name"]: r["made_by"] for r in json.loads(invoke("list", "runs", "--json").stdout)["runs"]}
    assert made == {"mine-sum": "mine", "tiny-concat": None}


# 2. the first try leads somewhere -------------------------------------------------------------

@pytest.mark.slow
def test_an_empty_workspace_says_what_to_type_and_needs_no_torch_to_say_it(tmp_path: Path) -> None:
    code = ("import sys; from typer.testing import CliRunner; from mmfuse.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code); print(r.stderr, end=''); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "MMFUSE_WORKSPACE": str(tmp_path / "ws")}
    for args in (["caption", "photo.jpg"], ["evaluate"], ["train"], ["show"], ["predict", "a.png", "--text", "x"]):
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True).stdout
        code_line, *errors, torch_loaded = out.splitlines()
        assert code_line == "1" and len(errors) == 1, (args, out)
        assert "mmfuse prepare-data shapes" in errors[0], (args, errors)
        assert torch_loaded == "False", args


def test_run_defaults_to_the_most_recent_and_says_which(trained: Path, tmp_path: Path) -> None:
    ws = _copy(trained, tmp_path)
    image = sorted((ws / "datasets" / "tiny" / "images" / "test").glob("*.png"))[0]
    named = invoke("caption", str(image), "--run", "r", "-w", str(ws))
    res = invoke("caption", str(image), "-w", str(ws))
    assert res.exit_code == 0 and res.stdout == named.stdout
    assert "mmfuse: using run 'r', the most recent" in res.stderr
    shutil.copytree(ws / "runs" / "r", ws / "runs" / "newer")
    os.utime(ws / "runs" / "newer" / "config.json")  # started later
    os.utime(ws / "runs" / "r" / "config.json", (1, 1))
    assert "using run 'newer'" in invoke("caption", str(image), "-w", str(ws)).stderr


def test_top_level_help_says_what_to_do_first() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert "  Start:  mmfuse prepare-data shapes; mmfuse train --data shapes --run demo" in lines
    assert "  Photos: mmfuse prepare-data folder --images DIR --captions FILE.csv" in lines


# 3. what is there ------------------------------------------------------------------------------

def test_list_and_show_report_what_the_workspace_holds(trained: Path) -> None:
    listed = json.loads(invoke("list", "--json", "-w", str(trained)).stdout)
    (data,) = listed["datasets"]
    manifest = json.loads((trained / "datasets" / "tiny" / "manifest.json").read_text())
    assert data["name"] == "tiny" and data["task"] == "caption"
    assert data["splits"] == {s: c["images"] for s, c in manifest["splits"].items()} == {"train": 48, "val": 8, "test": 8}
    (run,) = listed["runs"]
    history = [json.loads(line) for line in (trained / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda r: r["val_cider_d"])
    assert (run["name"], run["task"], run["data"], run["fusion"], run["epochs"]) == ("r", "caption", "tiny", "concat", "2/2")
    assert (run["best_epoch"], run["best"]) == (best["epoch"], best["val_cider_d"])
    inodes = {p.stat().st_ino: p.stat().st_size for p in (trained / "runs" / "r").rglob("*") if p.is_file()}
    assert run["bytes"] == sum(inodes.values())  # a file with two names counted once
    shown = json.loads(invoke("show", "r", "--json", "-w", str(trained)).stdout)
    assert shown["history"] == history and shown["config"]["model"]["fusion"] == "concat"
    assert set(shown["files"]) == {p.name for p in (trained / "runs" / "r").iterdir() if p.is_file()}
    res = invoke("show", "r", "-w", str(trained))
    assert res.exit_code == 0 and "validation per epoch" in res.stderr and "best.safetensors" in res.stderr


def test_shell_completion_offers_the_workspaces_runs_and_data_sets(trained: Path) -> None:
    env = {**os.environ, "MMFUSE_WORKSPACE": str(trained), "_MMFUSE_COMPLETE": "complete_bash"}
    for words, expected in ((["caption", "--run", ""], "r"), (["train", "--data", "t"], "tiny")):
        line = " ".join(["mmfuse", *words])
        out = subprocess.run([sys.executable, "-m", "mmfuse"], capture_output=True, text=True,
                             env={**env, "COMP_WORDS": line, "COMP_CWORD": str(len(words))}).stdout
        assert expected in out.split(), (words, out)


# 4. random backbone weights are said ----------------------------------------------------------

def test_a_torchvision_encoder_without_weights_is_said_once(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmfuse.train.loop as loop

    def stop_before_training(*args, **kwargs):
        raise SystemExit(0)

    monkeypatch.setattr(loop, "_run_loop", stop_before_training)
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--encoder", "resnet18", "--run", "a")
    assert res.stderr.count("resnet18 starts from random weights") == 1, res.stderr
    res = invoke("train", "--data", "tiny", "--run", "b")  # the small CNN is meant to train from scratch
    assert "random weights" not in res.stderr


# 5. fast help; errors before torch ---------------------------------------------------------------

def test_every_help_imports_nothing_heavy() -> None:
    code = ("import sys; from typer.testing import CliRunner; from mmfuse.cli import app; "
            f"cmds = {COMMANDS!r}; "
            "rs = [CliRunner().invoke(app, [c, '--help']) for c in cmds]; "
            "assert all(r.exit_code == 0 for r in rs), [r.output for r in rs]; "
            "heavy = [m for m in ('torch', 'spacy', 'torchvision', 'numpy', 'PIL', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_image_or_run_is_said_before_torch_loads(trained: Path) -> None:
    code = ("import sys; from typer.testing import CliRunner; from mmfuse.cli import app; "
            "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code); print(r.stderr, end=''); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "MMFUSE_WORKSPACE": str(trained)}
    cases = [(["caption", "nope.png", "--run", "r"], "nope.png"), (["caption", "x.png", "--run", "nope"], "no run 'nope'"),
             (["evaluate", "--run", "nope"], "no run 'nope'"), (["predict", "nope.png", "--text", "x", "--run", "r"], "nope.png"),
             (["ask", "nope.png", "--question", "x ?", "--run", "r"], "nope.png"),
             (["ask", "x.png", "--question", "x ?", "--run", "nope"], "no run 'nope'")]
    for args, message in cases:
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True).stdout
        code_line, error, torch_loaded = out.splitlines()
        assert code_line == "1" and message in error and torch_loaded == "False", (args, out)


def test_help_is_never_cut_and_flags_show_no_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    for command in COMMANDS:
        lines = invoke(command, "--help").stdout.splitlines()
        cut = [line for line in lines if "…" in line or line.endswith("...") and not line.endswith(("}...", "]..."))]
        assert not cut and not any("<bool>" in line for line in lines), (command, cut)
        assert max(len(line) for line in lines) <= 80, command


# 6. plain progress lines when stderr is a file -------------------------------------------------

@pytest.mark.slow
def test_progress_and_summaries_reach_a_log_file_as_plain_lines(workspace: Path, tmp_path: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    env = {**os.environ, "MMFUSE_WORKSPACE": str(workspace)}
    log = tmp_path / "log"
    with log.open("w") as err:
        subprocess.run([sys.executable, "-m", "mmfuse", "train", "--data", "tiny", "--run", "t", *SMALL, "--batch-size", "4"],
                       env=env, stderr=err, check=True)
        images = sorted((workspace / "datasets" / "tiny" / "images" / "test").glob("*.png"))
        subprocess.run([sys.executable, "-m", "mmfuse", "caption", *map(str, images), "--run", "t"], env=env,
                       stdout=subprocess.DEVNULL, stderr=err, check=True)
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no redrawn bar, no terminal codes
    lines = text.splitlines()
    assert "train: 12/12  0:" in "\n".join(lines)  # the step count reaches the log, as a line
    assert any(line.startswith("epoch 1: loss") for line in lines)
    assert lines[-1].startswith(f"captioned {len(images)} of {len(images)} images in ")


# 7. output a program can match back ------------------------------------------------------------

def test_n_best_text_keeps_one_line_per_input(trained: Path, tmp_path: Path) -> None:
    images = sorted((trained / "datasets" / "tiny" / "images" / "test").glob("*.png"))[:2]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    args = [str(images[0]), str(bad), str(images[1]), "--run", "r", "-w", str(trained), "--beam-size", "3", "--n-best", "3"]
    text = invoke("caption", *args, "--format", "text")
    jsonl = [json.loads(line) for line in invoke("caption", *args, "--format", "jsonl").stdout.splitlines()]
    lines = text.stdout.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == ""  # line i is input i; the unreadable one is empty
    assert [lines[0].split("\t"), lines[2].split("\t")] == [j["captions"] for j in jsonl]


def test_predict_tsv_carries_the_question_and_unknown_words_are_said(trained_qa: Path) -> None:
    image = sorted((trained_qa / "datasets" / "qa" / "images" / "test").glob("*.png"))[0]
    res = invoke("predict", str(image), "--text", "is there a zebra ?", "--run", "q", "-w", str(trained_qa))
    assert res.exit_code == 0, res.stderr
    path, question, label, probability = res.stdout.rstrip("\n").split("\t")
    assert (path, question) == (str(image), "is there a zebra ?") and 0 < float(probability) <= 1
    assert "mmfuse: warning: 'zebra' in 'is there a zebra ?': not in the model's vocabulary" in res.stderr
    res = invoke("predict", str(image), "--text", "is there a circle ?", "--run", "q", "-w", str(trained_qa))
    assert "warning" not in res.stderr


# 8. small splits are said ------------------------------------------------------------------------

def test_a_split_too_small_to_mean_anything_is_said(trained: Path, workspace: Path) -> None:
    res = invoke("prepare-data", "shapes", "--name", "tiny", *TINY)
    assert "mmfuse: warning: split val has only 8 image(s)" in res.stderr
    assert "mmfuse: warning: split test has only 8 image(s)" in res.stderr
    res = invoke("evaluate", "--run", "r", "--no-meteor", "-w", str(trained))
    assert "mmfuse: warning: scored on 8 images only" in res.stderr


# 9. Flickr8k token files with spaces -------------------------------------------------------------

def test_flickr8k_token_lines_may_separate_the_caption_with_spaces(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "img"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(images / name)
    tab = "a.jpg#0\ta dog runs\nb.jpg#0\ta cat sits\nc.jpg#0\ta bird flies\n"
    (tmp_path / "tab.txt").write_text(tab)
    (tmp_path / "space.txt").write_text(tab.replace("a.jpg#0\t", "a.jpg#0 ").replace("c.jpg#0\t", "c.jpg#0   "))
    ratios = ["--val-ratio", "0.34", "--test-ratio", "0.34", "--images", str(images)]
    for name in ("tab", "space"):
        res = invoke("prepare-data", "flickr8k", "--captions", str(tmp_path / f"{name}.txt"), "--name", name, *ratios)
        assert res.exit_code == 0, res.stderr
    root = Path(os.environ["MMFUSE_WORKSPACE"]) / "datasets"
    read = {n: sorted(line for split in ("train", "val", "test") for line in (root / n / f"{split}.jsonl").read_text().splitlines())
            for n in ("tab", "space")}
    assert read["tab"] == read["space"]


# 11. a run holds its weights once or twice, never three times --------------------------------------

def test_a_finished_run_keeps_one_copy_of_weights_that_are_both_best_and_last(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    assert invoke("train", "--data", "tiny", "--run", "one", *SMALL).exit_code == 0
    run = workspace / "runs" / "one"
    assert (run / "best.safetensors").stat().st_ino == (run / "last.safetensors").stat().st_ino
    assert not (run / "checkpoint.safetensors").exists()
    assert invoke("caption", str(next((workspace / "datasets/tiny/images/test").glob("*.png"))), "--run", "one",
                  "--checkpoint", "best").exit_code == 0


# 12. small things ----------------------------------------------------------------------------------

def test_evaluate_says_where_it_wrote(trained: Path, tmp_path: Path) -> None:
    ws = _copy(trained, tmp_path)
    res = invoke("evaluate", "--run", "r", "--no-meteor", "-w", str(ws))
    report, results = ws / "runs" / "r" / "eval-test.json", ws / "runs" / "r" / "results-test.json"
    assert f"report written to {report}, captions to {results}" in res.stderr
    assert report.is_file() and results.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_workspace_files_follow_the_umask(umask: int, tmp_path: Path) -> None:
    code = (f"import os, sys; os.umask({umask}); from mmfuse.cli import main; sys.argv = ['mmfuse'] + sys.argv[1:]; main()")
    env = {**os.environ, "MMFUSE_WORKSPACE": str(tmp_path / "ws")}
    for args in (["prepare-data", "shapes", "--name", "tiny", *TINY], ["train", "--data", "tiny", "--run", "r", *SMALL]):
        subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True)
    modes = {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "ws").rglob("*") if p.is_file()}
    dirs = {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "ws").rglob("*") if p.is_dir()}
    assert modes == {oct(0o666 & ~umask)} and dirs == {oct(0o777 & ~umask)}
