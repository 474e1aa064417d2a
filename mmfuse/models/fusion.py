"""Fusion strategies: how image features and text states become one sequence for the decoder.

Every fusion has the same constructor ``(image_dim, text_dim, dropout)`` and the same ``forward``:
``(ImageFeatures, text (B, T, Dt), mask (B, T) or None) -> fused (B, T, out_dim)``, so one training
loop, one test and one ablation command serve them all. Fusions are applied position-wise, which
also makes them usable one decoding step at a time (T = 1).

Shape legend: B batch, T text positions, N image grid cells, Di image width, Dt text width.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.models.encoders import ImageFeatures
from mmfuse.registry import Registry

FUSIONS: Registry[nn.Module] = Registry("fusion")


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """Feature-level fusion: the global image vector, projected to Dt, concatenated to every word.

    Args:
        image_dim: Di, width of the image features.
        text_dim: Dt, width of the text states (word embeddings for a captioner).
        dropout: dropout on the projected image vector.

    ``out_dim`` is 2 * Dt.
    """

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(image_dim, text_dim), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.out_dim = 2 * text_dim

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """image.pooled (B, Di), text (B, T, Dt) -> (B, T, 2*Dt). ``mask`` is unused here."""
        img = self.proj(image.pooled)  # (B, Dt)
        img = img.unsqueeze(1).expand(-1, text.size(1), -1)  # (B, T, Dt)
        return torch.cat([text, img], dim=-1)
