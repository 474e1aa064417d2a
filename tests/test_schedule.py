"""The learning-rate schedule: warmup, then constant or cosine, applied per optimiser step."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.train.loop import _scheduler, lr_factor


def _lrs(kind: str, total: int, warmup: int) -> list[float]:
    """The learning rate each of ``total`` optimiser steps uses, with peak 1."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _scheduler(opt, kind, total, warmup)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_warmup_rises_linearly_to_the_peak_then_holds_for_constant() -> None:
    assert _lrs("constant", 8, 4) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_cosine_without_warmup_matches_torch_cosine_annealing() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs("cosine", 10, 0) == pytest.approx(expected, abs=1e-12)


def test_cosine_after_warmup_decays_over_the_remaining_steps() -> None:
    lrs = _lrs("cosine", 12, 2)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[2:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert lr_factor(12, "cosine", 12, 2) == pytest.approx(0.0)  # the end of the run
