"""Word grounding: where in the image each word's referent is, read out by text-derived roles.

A relation question ("is the red circle to the left of the blue square ?") needs the positions of
two objects that the question names, compared in the order the question gives. Fusing a pooled
question vector with image features does not learn this from yes/no answers here: each image's
"no" twin is the same words with the two objects swapped, so only features that bind *which*
object to *which* role carry signal, and those have none at initialisation (measured: training
loss stays at 0.693 for thousands of steps, even given the exact objects instead of pixels).

This module makes the comparison first order. Each word attends over the grid cells (softmax over
cells, so the result does not depend on object size) and gets the expected Fourier features of
the cells it matches: where its referent is. Roles derived from each word's text state weight
those positions and sum over words, so "x of the first-named object minus x of the second, sign
flipped for 'right'" is a linear function of the output. Trained jointly with everything else;
:meth:`WordGrounding.referents` returns the word-to-cell maps for inspection.

Shape legend: B batch, N grid cells (g x g), T text positions, R roles, P position features.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from mmfuse.errors import MmfuseError

FREQUENCIES = (1, 2, 3, 4)


@functools.lru_cache(maxsize=16)
def grid_position_features(cells: int, device: torch.device | None = None) -> torch.Tensor:
    """Fourier features of the centres of a square grid of ``cells`` cells, row-major -> (N, P).

    P = 1 + 4 * len(FREQUENCIES): a constant, then sin and cos of x and y at each frequency.
    A constant per (cells, device), built once and shared: callers must not modify it.
    """
    side = math.isqrt(cells)
    if side * side != cells:
        raise MmfuseError(f"word grounding needs a square grid of image features, got {cells} cells")
    centres = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) / side * 2 - 1  # (g,) in (-1, 1)
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    xy = torch.stack([x.flatten(), y.flatten()], 1)  # (N, 2)
    waves = [fn(xy * math.pi * k / 2) for k in FREQUENCIES for fn in (torch.sin, torch.cos)]  # each (N, 2)
    return torch.cat([xy.new_ones(cells, 1), *waves], 1)  # (N, P)


class WordGrounding(nn.Module):
    """Grounded word positions combined by roles -> one vector per sample.

    Args:
        image_dim: width Di of the grid features.
        text_dim: width Dt of the text states.
        out_dim: width of the output vector.
        roles: how many role channels read the grounded positions.
    """

    position_dim = 1 + 4 * len(FREQUENCIES)

    def __init__(self, image_dim: int, text_dim: int, out_dim: int, roles: int = 16):
        super().__init__()
        self.key = nn.Linear(image_dim + self.position_dim, out_dim)
        self.query = nn.Linear(text_dim, out_dim)
        self.role = nn.Linear(text_dim, roles)
        self.out = nn.Sequential(nn.Linear(roles * self.position_dim, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def referents(self, grid: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """grid (B, N, Di), states (B, T, Dt) -> for each word, a distribution over cells (B, N, T)."""
        return self._where(grid, states, self._positions(grid))

    def forward(self, grid: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """grid (B, N, Di), states (B, T, Dt), mask (B, T) -> (B, out_dim)."""
        positions = self._positions(grid)  # (N, P)
        word_positions = torch.einsum("bnt,np->btp", self._where(grid, states, positions), positions)  # (B, T, P)
        roles = self.role(states) * mask.unsqueeze(-1).to(states.dtype)  # (B, T, R), 0 on padding
        return self.out(torch.einsum("btr,btp->brp", roles, word_positions).flatten(1))  # (B, out_dim)

    @staticmethod
    def _positions(grid: torch.Tensor) -> torch.Tensor:
        return grid_position_features(grid.size(1), grid.device).to(grid.dtype)  # (N, P)

    def _where(self, grid: torch.Tensor, states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        keys = self.key(torch.cat([grid, positions.expand(grid.size(0), -1, -1)], -1))  # (B, N, D)
        scores = torch.einsum("bnd,btd->bnt", keys, self.query(states)) / math.sqrt(keys.size(-1))
        return scores.softmax(1)  # (B, N, T), each word's column sums to 1
