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


@FUSIONS.register("sum")
class SumFusion(nn.Module):
    """Feature-level fusion: both modalities projected to Dt and added at every position.

    ``fused = W_t text + W_i pooled``. Cheaper than ``concat`` (``out_dim`` is Dt).
    """

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, text_dim)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, text_dim), nn.Dropout(dropout))
        self.out_dim = text_dim

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """image.pooled (B, Di), text (B, T, Dt) -> (B, T, Dt)."""
        return torch.tanh(self.text_proj(text) + self.image_proj(image.pooled).unsqueeze(1))


@FUSIONS.register("gated")
class GatedFusion(nn.Module):
    """Feature-level fusion with learned, input-dependent modality weights (a Gated Multimodal Unit,
    Arevalo et al. 2017): ``z = sigmoid(W [text; image])``, ``fused = z * h_text + (1 - z) * h_image``.

    ``z`` is a weight per feature, position and example: :meth:`modality_weights` returns it, so
    one can see how much each word leaned on the text (z) or on the image (1 - z).
    """

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        self.text_proj = nn.Linear(text_dim, text_dim)
        self.image_proj = nn.Sequential(nn.Linear(image_dim, text_dim), nn.Dropout(dropout))
        self.gate = nn.Linear(text_dim + image_dim, text_dim)
        self.out_dim = text_dim

    def modality_weights(self, image: ImageFeatures, text: torch.Tensor) -> torch.Tensor:
        """The text weight z in [0, 1], (B, T, Dt); the image weight is 1 - z."""
        img = image.pooled.unsqueeze(1).expand(-1, text.size(1), -1)  # (B, T, Di)
        return torch.sigmoid(self.gate(torch.cat([text, img], dim=-1)))

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """image.pooled (B, Di), text (B, T, Dt) -> (B, T, Dt)."""
        z = self.modality_weights(image, text)  # (B, T, Dt)
        h_text = torch.tanh(self.text_proj(text))  # (B, T, Dt)
        h_image = torch.tanh(self.image_proj(image.pooled)).unsqueeze(1)  # (B, 1, Dt)
        return z * h_text + (1 - z) * h_image


@FUSIONS.register("film")
class FiLMFusion(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018), image-conditioned: the image predicts a
    scale and a shift for every feature of the text states, ``fused = (1 + gamma(img)) * text + beta(img)``.

    The scale is centred on 1 so that an untrained model starts from the plain text states.
    """

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        self.film = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_dim, 2 * text_dim))
        self.out_dim = text_dim

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """image.pooled (B, Di), text (B, T, Dt) -> (B, T, Dt)."""
        gamma, beta = self.film(image.pooled).unsqueeze(1).chunk(2, dim=-1)  # each (B, 1, Dt)
        return (1 + gamma) * text + beta


@FUSIONS.register("bilinear")
class BilinearFusion(nn.Module):
    """Low-rank bilinear pooling (MLB, Kim et al. 2017; MFB-style sum pooling over k factors):
    ``fused = P (tanh(U img) * tanh(V text))`` pooled over ``k`` factors, then signed square root and
    L2 normalisation as in MFB (Yu et al. 2017). Every output feature mixes both modalities
    multiplicatively, which plain concatenation cannot do.
    """

    factors = 4

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0):
        super().__init__()
        rank = text_dim * self.factors
        self.image_proj = nn.Linear(image_dim, rank)
        self.text_proj = nn.Linear(text_dim, rank)
        self.drop = nn.Dropout(dropout)
        self.out_proj = nn.Linear(text_dim, text_dim)
        self.out_dim = text_dim

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """image.pooled (B, Di), text (B, T, Dt) -> (B, T, Dt)."""
        joint = torch.tanh(self.image_proj(image.pooled)).unsqueeze(1) * torch.tanh(self.text_proj(text))  # (B, T, k*Dt)
        pooled = self.drop(joint).unflatten(-1, (-1, self.factors)).sum(-1)  # (B, T, Dt)
        pooled = torch.sign(pooled) * torch.sqrt(pooled.abs() + 1e-8)
        return self.out_proj(nn.functional.normalize(pooled, dim=-1))
