"""The captioner: image encoder -> fusion with word embeddings -> decoder -> next-word logits.

Shape legend: B images, M captions (several per image), T positions, V vocabulary, D widths.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.data.vocab import BOS_ID, PAD_ID
from mmfuse.models.decoders import DECODERS
from mmfuse.models.encoders import IMAGE_ENCODERS, ImageFeatures
from mmfuse.models.fusion import FUSIONS


class Captioner(nn.Module):
    """Generic encoder / fusion / decoder composition; :func:`build_captioner` makes one from config."""

    def __init__(self, encoder: nn.Module, fusion: nn.Module, decoder: nn.Module, vocab_size: int, embed_dim: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(dropout)
        self.fusion = fusion
        self.decoder = decoder

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """images (B, 3, S, S) -> ImageFeatures(grid (B, N, D), pooled (B, D))."""
        return self.encoder(images)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            images: (B, 3, S, S).
            tokens: decoder inputs ``<bos> w1 .. wn`` padded, (M, T).
            image_index: which image each caption describes, (M,).

        Returns:
            next-word logits, (M, T, V).
        """
        features = self.encode(images).select(image_index)  # rows (M, ...)
        logits, _ = self.decode(features, tokens, None)
        return logits

    def decode(self, features: ImageFeatures, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Run the decoder over ``tokens`` (M, T) from ``state`` -> logits (M, T, V), new state."""
        words = self.embed_drop(self.embed(tokens))  # (M, T, E)
        fused = self.fusion(features, words, tokens != PAD_ID)  # (M, T, F)
        return self.decoder(fused, state)

    def step(self, features: ImageFeatures, last: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One decoding step: last tokens (B,) -> log-probabilities (B, V), new state."""
        logits, state = self.decode(features, last.unsqueeze(1), state)  # (B, 1, V)
        return generation_log_probs(logits[:, -1]), state

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        return self.decoder.reorder_state(state, index)


def generation_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next word (..., V) when generating: ``<pad>`` and ``<bos>`` are never emitted."""
    logits = logits.float().clone()
    logits[..., PAD_ID] = float("-inf")
    logits[..., BOS_ID] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def check_parts(cfg: ModelConfig) -> None:
    """Fail fast, listing the valid names, when ``cfg`` names an unknown part."""
    IMAGE_ENCODERS.get(cfg.encoder)
    FUSIONS.get(cfg.fusion)
    DECODERS.get(cfg.decoder)


def build_captioner(cfg: ModelConfig, vocab_size: int) -> Captioner:
    """A captioner with the parts named in ``cfg`` (unknown names list the valid ones)."""
    encoder = IMAGE_ENCODERS.create(cfg.encoder, feature_dim=cfg.feature_dim, image_size=cfg.image_size)
    fusion = FUSIONS.create(cfg.fusion, image_dim=encoder.out_dim, text_dim=cfg.embed_dim, dropout=cfg.dropout)
    decoder = DECODERS.create(
        cfg.decoder,
        input_dim=fusion.out_dim,
        hidden_dim=cfg.hidden_dim,
        vocab_size=vocab_size,
        num_layers=cfg.num_layers,
        dropout=cfg.dropout,
    )
    return Captioner(encoder, fusion, decoder, vocab_size, cfg.embed_dim, cfg.dropout)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
