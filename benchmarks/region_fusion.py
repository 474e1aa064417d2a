"""Classifier region fusion: the question projected once per sample (broadcast over regions, what
``Classifier`` does) vs once per region (the question repeated B*R times), in one run.

Times forward + backward of each position fusion on the classifier's shapes (batch 64, 1 + 8x8
regions of width 256, a bi-LSTM question vector of width 256) and prints both times, the ratio and
the largest output difference.

    python benchmarks/region_fusion.py [--batch 64] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmfuse.models.encoders import ImageFeatures  # noqa: E402
from mmfuse.models.fusion import FUSIONS, POSITION  # noqa: E402


def broadcast(fusion: torch.nn.Module, regions: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """regions (B, R, Di), text (B, Dt) -> (B, R, F), the question projected once per sample."""
    return fusion(ImageFeatures(grid=regions, pooled=regions), text[:, None, None])[:, :, 0]


def repeated(fusion: torch.nn.Module, regions: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The same result with every region a separate sample and the question repeated R times."""
    b, r = regions.shape[:2]
    flat = regions.flatten(0, 1)  # (B*R, Di)
    out = fusion(ImageFeatures(grid=flat.unsqueeze(1), pooled=flat), text.repeat_interleave(r, 0).unsqueeze(1))
    return out[:, 0].unflatten(0, (b, r))  # (B, R, F)


def seconds(path: Callable[..., torch.Tensor], fusion: torch.nn.Module, regions: torch.Tensor,
            text: torch.Tensor, repeats: int) -> float:
    """Best-of-``repeats`` time of one forward + backward."""
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        path(fusion, regions, text).square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    regions = torch.randn(args.batch, 65, 256, requires_grad=True)  # (B, R, Di)
    text = torch.randn(args.batch, 256, requires_grad=True)  # (B, Dt)
    print(f"{'fusion':<10}{'repeated s':>12}{'broadcast s':>13}{'speed-up':>10}{'max |diff|':>12}")
    for name in sorted(n for n in FUSIONS.names() if FUSIONS.get(n).kind == POSITION):
        fusion = FUSIONS.create(name, image_dim=256, text_dim=256).eval()  # eval: no dropout, same outputs
        with torch.no_grad():
            diff = (broadcast(fusion, regions, text) - repeated(fusion, regions, text)).abs().max().item()
        slow = seconds(repeated, fusion, regions, text, args.repeats)
        fast = seconds(broadcast, fusion, regions, text, args.repeats)
        print(f"{name:<10}{slow:>12.4f}{fast:>13.4f}{slow / fast:>9.2f}x{diff:>12.2e}")


if __name__ == "__main__":
    main()
