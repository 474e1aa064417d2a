"""The training engine: DDP through torchrun equals one process, Ctrl-C + --resume equals an
uninterrupted run, gradient accumulation equals one big batch, precision, schedules, early
stopping, logging, torch.compile's fallback, and the resumable checkpoint's refusals.

Runs that must match exactly use a frozen torchvision encoder (its batch norm in eval mode: batch
statistics would differ between one batch and its halves) through the feature cache, and no dropout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from mmfuse.train.loop import _CompiledOrEager, lr_factor
from mmfuse.train.state import CHECKPOINT
from mmfuse.workspace import RunDir
from tests.conftest import TINY, invoke

SMALL = ["--feature-dim", "16", "--embed-dim", "8", "--hidden-dim", "16"]


@pytest.fixture
def cached(workspace: Path, tmp_path: Path) -> list[str]:
    """Data set 'tiny' with a feature cache of a random frozen resnet18; the train flags that use it."""
    torch.manual_seed(5)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("cache-features", "--data", "tiny", "--encoder", "resnet18", "--weights", str(weights), "--workers", "0")
    assert res.exit_code == 0, res.stderr
    return ["--data", "tiny", "--encoder", "resnet18", "--weights", str(weights), "--dropout", "0", *SMALL]


def _weights(workspace: Path, run: str) -> dict[str, torch.Tensor]:
    return load_file(workspace / "runs" / run / "last.safetensors")


def _losses(workspace: Path, run: str) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (workspace / "runs" / run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmfuse", *args]


@pytest.mark.slow
def test_torchrun_with_two_processes_trains_like_one_process_at_the_same_global_batch(cached: list[str], workspace: Path) -> None:
    args = [*cached, "--epochs", "2", "--batch-size", "8"]
    assert invoke("train", "--run", "one", *args).exit_code == 0
    env = {**os.environ, "MMFUSE_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    done = subprocess.run([*torchrun, "-m", "mmfuse", "--", "train", "--run", "two", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("run two at") == 1  # rank 0 alone reports
    _assert_close(_weights(workspace, "two"), _weights(workspace, "one"), atol=1e-5)
    assert _losses(workspace, "two") == pytest.approx(_losses(workspace, "one"), abs=1e-5)
    assert sorted(p.name for p in (workspace / "runs").iterdir()) == ["one", "two"]


def _progress(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["mmfuse"])["progress"]


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    args = ["--data", "tiny", "--epochs", "2", "--batch-size", "4", *SMALL]  # dropout on: the RNG state is restored too
    assert invoke("train", "--run", "whole", *args).exit_code == 0
    env = {**os.environ, "MMFUSE_WORKSPACE": str(workspace)}
    proc = subprocess.Popen(_cli("train", "--run", "cut", "--save-every", "1", *args), env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a foreground job
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint, deadline = workspace / "runs" / "cut" / CHECKPOINT, time.monotonic() + 120
    while time.monotonic() < deadline:  # interrupt after step 3 of 12 (epoch 1 has 12 batches of 4)
        try:
            if _progress(checkpoint)["step"] >= 3:
                break
        except Exception:  # not written yet (or being replaced)
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume --run cut" in err.strip().splitlines()[-1]
    stopped = _progress(checkpoint)
    assert stopped["epoch"] == 1 and 3 <= stopped["step"] < 12  # mid-epoch
    res = invoke("train", "--run", "cut", "--resume")
    assert res.exit_code == 0, res.stderr
    assert f"resuming run cut at epoch 1, step {stopped['step']}" in res.stderr
    _assert_close(_weights(workspace, "cut"), _weights(workspace, "whole"), atol=0.0)
    assert _losses(workspace, "cut") == _losses(workspace, "whole")


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(cached: list[str], workspace: Path) -> None:
    assert invoke("train", "--run", "big", *cached, "--epochs", "1", "--batch-size", "16").exit_code == 0
    res = invoke("train", "--run", "acc", *cached, "--epochs", "1", "--batch-size", "8", "--accumulate", "2")
    assert res.exit_code == 0, res.stderr
    _assert_close(_weights(workspace, "acc"), _weights(workspace, "big"), atol=1e-5)
    res = invoke("train", "--run", "small", *cached, "--epochs", "1", "--batch-size", "8")  # the test can fail:
    with pytest.raises(AssertionError):
        _assert_close(_weights(workspace, "small"), _weights(workspace, "big"), atol=1e-5)


@pytest.mark.slow
def test_bf16_on_cpu_trains_like_fp32_and_keeps_fp32_weights(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    for run, precision in (("f", "fp32"), ("b", "bf16")):
        res = invoke("train", "--data", "tiny", "--run", run, "--epochs", "3", "--batch-size", "8", "--precision",
                     precision, *SMALL)
        assert res.exit_code == 0, res.stderr
    bf16, fp32 = _losses(workspace, "b"), _losses(workspace, "f")
    assert bf16[0] > bf16[1] > bf16[2]
    assert bf16 == pytest.approx(fp32, abs=0.03)
    assert bf16 != fp32  # it did run in reduced precision
    assert all(t.dtype == torch.float32 for t in _weights(workspace, "b").values() if t.is_floating_point())


def test_fp16_needs_cuda(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "h", "--precision", "fp16", "--device", "cpu", *SMALL)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == ["mmfuse: error: --precision fp16 needs a CUDA device (it uses a "
                                               "gradient scaler); on CPU use bf16"]


@pytest.mark.slow
def test_patience_stops_when_the_metric_stops_improving(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "p", "--epochs", "6", "--lr", "1e-9", "--patience", "2", *SMALL)
    assert res.exit_code == 0, res.stderr
    records = [json.loads(line) for line in (workspace / "runs" / "p" / "metrics.jsonl").read_text().splitlines()]
    last_best = max(r["epoch"] for r in records if r["best"])
    assert len(records) < 6 and records[-1]["epoch"] == last_best + 2  # (batch-norm statistics still move)
    assert "early stop: val cider_d has not improved for 2 epochs (best" in res.stderr


def test_step_schedule_multiplies_by_gamma_every_period() -> None:
    factors = [lr_factor(s, "step", 100, 0, steps_per_epoch=4, step_epochs=2, gamma=0.5) for s in range(20)]
    assert factors == [1.0] * 8 + [0.5] * 8 + [0.25] * 4
    assert lr_factor(1, "step", 100, warmup_steps=4, steps_per_epoch=4) == 0.5  # warmup first


def test_a_run_logs_the_loss_of_every_step_and_draws_its_curves(trained: Path) -> None:
    run = RunDir(trained / "runs" / "r")
    steps = [json.loads(line) for line in run.steps.read_text().splitlines()]
    history = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    per_epoch = len(steps) // len(history)
    assert per_epoch > 1 and [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    for epoch in history:  # the epoch's loss is a (token-weighted) mean of its steps' losses
        losses = [s["loss"] for s in steps[(epoch["epoch"] - 1) * per_epoch:epoch["epoch"] * per_epoch]]
        assert min(losses) <= epoch["train_loss"] <= max(losses)
    with Image.open(run.curves) as image:  # loss per step | BLEU/ROUGE (0-1) | CIDEr-D: three panels
        assert image.format == "PNG" and image.size == (1500, 400)
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 50  # lines, markers, text: not a blank canvas


def test_tensorboard_writes_events_or_says_what_is_missing(workspace: Path) -> None:
    assert invoke("prepare-data", "shapes", "--name", "tiny", *TINY).exit_code == 0
    res = invoke("train", "--data", "tiny", "--run", "tb", "--epochs", "1", "--tensorboard", *SMALL)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert res.exit_code == 1
        assert res.stderr.startswith("mmfuse: error: --tensorboard needs the tensorboard package: pip install tensorboard")
        assert not (workspace / "runs" / "tb").exists()
    else:
        assert res.exit_code == 0, res.stderr
        assert list((workspace / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_compile_falls_back_to_eager_saying_why(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken(*args):
        raise RuntimeError("no C compiler here")

    monkeypatch.setattr(torch, "compile", lambda net: broken)
    net = torch.nn.Linear(3, 2)
    wrapped = _CompiledOrEager(net)
    x = torch.randn(4, 3)
    assert torch.equal(wrapped(x), net(x))
    assert torch.equal(wrapped(x), net(x))
    err = capsys.readouterr().err
    assert err.count("torch.compile is not available here (RuntimeError: no C compiler here); training eagerly") == 1


@pytest.mark.parametrize("args,message", [
    (["--resume"], "--resume continues a run: name it with --run"),
    (["--resume", "--run", "nope"], "no run 'nope'"),
    (["--scst"], "--scst fine-tunes a trained captioner: name it with --from RUN"),
    (["--scst", "--from", "r", "--scst-samples", "1"], "--scst-samples must be >= 2 with the mean baseline, got 1"),
    (["--accumulate", "0"], "accumulate (--accumulate) must be >= 1, got 0"),
    (["--precision", "fp8"], "precision (--precision) must be fp32, bf16 or fp16, got 'fp8'"),
])
def test_bad_engine_options_are_one_clear_line(args: list[str], message: str, workspace: Path) -> None:
    res = invoke("train", "--data", "tiny", *args)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_a_finished_run_keeps_no_resumable_state_and_resume_says_so(trained: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    run = ws / "runs" / "r"
    assert not (run / CHECKPOINT).exists()  # the optimiser state (2x the weights) goes when the run ends
    res = invoke("train", "--run", "r", "--resume", "-w", str(ws))
    assert res.exit_code == 1
    assert "run 'r' has no resumable checkpoint: it has finished (2 of 2 epochs" in res.stderr


def test_scst_with_the_greedy_baseline_trains_the_decoder_and_keeps_the_image_encoder(trained: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    res = invoke("train", "--data", "tiny", "--scst", "--from", "r", "--run", "s", "--epochs", "1", "--batch-size", "16",
                 "--scst-baseline", "greedy", "--scst-samples", "2", "--lr", "1e-3", "-w", str(ws))
    assert res.exit_code == 0, res.stderr
    before, after = load_file(ws / "runs" / "r" / "best.safetensors"), load_file(ws / "runs" / "s" / "last.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["decoder.out.weight"], after["decoder.out.weight"])
    config = json.loads((ws / "runs" / "s" / "config.json").read_text())
    assert config["model"] == json.loads((ws / "runs" / "r" / "config.json").read_text())["model"]


def test_ranks_share_each_global_batch_in_the_one_process_order() -> None:
    from torch.utils.data import SequentialSampler

    from mmfuse.train.distributed import ShardedBatches, World

    order = SequentialSampler(range(11))
    one = list(ShardedBatches(order, 4, World()))
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    shares = [list(ShardedBatches(order, 4, World(rank, 2))) for rank in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*shares)] == one
    three = [ShardedBatches(order, 5, World(rank, 3)) for rank in range(3)]  # 11 = 5 + 5 + 1: the 1 is left out
    assert [len(s) for s in three] == [2, 2, 2] and sorted(i for s in three for b in s for i in b) == list(range(10))
    resumed = ShardedBatches(order, 4, World())
    resumed.start = 2
    assert list(resumed) == one[2:] and len(resumed) == 1
