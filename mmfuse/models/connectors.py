"""Connectors: how image features enter a language model, the five published recipes, registered
in the fusion registry beside the feature- and model-level fusions.

Four are ``prefix`` fusions (image tokens placed before the words, in the word-embedding space), so
they work with every decoder, the from-scratch ones included:

- ``mlp`` (LLaVA-1.5): a 2-layer GELU MLP over every grid cell, one token per cell;
- ``pixel-shuffle`` (nanoVLM, Idefics3): s x s neighbouring cells folded into one token (s^2 fewer
  tokens, s^2 wider), then a linear map;
- ``resampler`` (Flamingo's Perceiver Resampler): K learned latents attend over the grid and
  themselves for L layers, giving K tokens whatever the grid size;
- ``qformer`` (BLIP-2): K learned queries; every layer self-attention among the queries,
  cross-attention to the image, a feed-forward block.

The fifth, ``xattn`` (Flamingo), is a ``cross`` fusion: a resampler turns the image into K media
tokens, and tanh-gated cross-attention blocks before every k-th block of the language model read
them. The gates start at 0, so at initialisation the frozen model computes exactly what it did
before. It needs a Hugging Face decoder (:mod:`mmfuse.models.language_model`).

Every connector takes ``(image_dim, text_dim, dropout, shape)`` with :class:`ConnectorShape`.

Shape legend: B batch, N grid cells (G x G), Di image width, Dt text (language model) width,
K learned queries, T text positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.errors import MmfuseError
from mmfuse.models.decoders import attention_heads
from mmfuse.models.encoders import ImageFeatures
from mmfuse.models.fusion import CROSS, FUSIONS, PREFIX


@dataclass(frozen=True)
class ConnectorShape:
    """The sizes of a connector (from :class:`~mmfuse.config.ModelConfig`).

    Attributes:
        tokens: K, learned queries of ``resampler``, ``qformer`` and ``xattn``.
        layers: L, layers of ``resampler``, ``qformer`` and ``xattn``'s resampler.
        shuffle: s, ``pixel-shuffle``'s folding factor.
        every: ``xattn``: a gated cross-attention block before every k-th language-model block.
        scaled: ``xattn``: its blocks' updates scaled to the hidden state (:class:`GatedCrossAttention`).
    """

    tokens: int = 32
    layers: int = 2
    shuffle: int = 2
    every: int = 1
    scaled: bool = True


class Connector(nn.Module):
    """Base of the connectors (the fusions that take a :class:`ConnectorShape`). ``reads_pooled``:
    whether the image's global vector is used (LLaVA and nanoVLM read the grid alone, so an
    encoder's global-vector head gets no gradient under them)."""

    bidirectional = False
    reads_pooled = True

    def forward(self, image: ImageFeatures, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The words pass unchanged: (B, T, Dt) -> (B, T, Dt)."""
        return text


@FUSIONS.register("mlp")
class MLPConnector(Connector):
    """LLaVA-1.5's projector: ``Linear(Di, Dt) -> GELU -> Linear(Dt, Dt)`` over every grid cell, so
    the language model reads N image tokens (LLaVA reads all 576 patch tokens of CLIP ViT-L/14-336)."""

    kind = PREFIX
    reads_pooled = False

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0, shape: ConnectorShape = ConnectorShape()):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(image_dim, text_dim), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(text_dim, text_dim))
        self.out_dim = text_dim

    def prefix(self, image: ImageFeatures) -> torch.Tensor:
        """image.grid (B, N, Di) -> N image tokens (B, N, Dt)."""
        return self.proj(image.grid)


@FUSIONS.register("pixel-shuffle")
class PixelShuffleConnector(Connector):
    """nanoVLM / Idefics3's modality projector: the G x G grid is cut into s x s squares, each
    square's cells concatenated into one (B, N / s^2, s^2 Di) token, then one linear map to Dt.
    The language model reads s^2 times fewer image tokens than with ``mlp``."""

    kind = PREFIX
    reads_pooled = False

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0, shape: ConnectorShape = ConnectorShape()):
        super().__init__()
        self.scale = shape.shuffle
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_dim * self.scale**2, text_dim))
        self.out_dim = text_dim

    def prefix(self, image: ImageFeatures) -> torch.Tensor:
        """image.grid (B, G*G, Di) -> (B, (G/s)^2, Dt)."""
        return self.proj(pixel_shuffle(image.grid, self.scale))


def pixel_shuffle(grid: torch.Tensor, scale: int) -> torch.Tensor:
    """Fold s x s neighbouring cells of a square grid into one: (B, G*G, D) -> (B, (G/s)^2, s*s*D)."""
    b, n, d = grid.shape
    side = math.isqrt(n)
    if side * side != n or side % scale:
        raise MmfuseError(f"the pixel-shuffle connector folds {scale} x {scale} cells of a square grid, but the "
                          f"encoder gives {n} cells ({side} x {side} is not divisible by {scale}); use "
                          f"--shuffle with a divisor of the grid side, or another connector")
    g = side // scale
    x = grid.view(b, g, scale, g, scale, d).permute(0, 1, 3, 2, 4, 5)  # (B, G/s, G/s, s, s, D)
    return x.reshape(b, g * g, scale * scale * d)


def connector_options(fusion: str, cfg: ModelConfig) -> dict[str, Any]:
    """The extra constructor argument of fusion ``fusion`` when it is a connector: its shape."""
    built = FUSIONS.get(fusion)
    if not (isinstance(built, type) and issubclass(built, Connector)):
        return {}
    return {"shape": ConnectorShape(cfg.image_tokens, cfg.connector_layers, cfg.shuffle, cfg.xattn_every,
                                    cfg.xattn_scaled)}


class _CellPositions(nn.Module):
    """Learned positions of up to ``max_cells`` grid cells (the global vector first)."""

    max_cells = 1025

    def __init__(self, width: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(self.max_cells, width) * 0.02)

    def forward(self, image: ImageFeatures, name: str) -> torch.Tensor:
        """-> the global vector and the grid cells with positions, (B, 1 + N, Di)."""
        cells = torch.cat([image.pooled.unsqueeze(1), image.grid], 1)
        if cells.size(1) > self.max_cells:
            raise MmfuseError(f"the {name} connector takes at most {self.max_cells - 1} grid cells, the encoder "
                              f"gives {cells.size(1) - 1}")
        return cells + self.pos[: cells.size(1)]


class _FeedForward(nn.Sequential):
    def __init__(self, width: int, dropout: float):
        super().__init__(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(4 * width, width))


class PerceiverLayer(nn.Module):
    """Flamingo's resampler layer: latents attend over [cells; latents], then a feed-forward block."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm_cells, self.norm_latents = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, attention_heads(width), dropout=dropout, batch_first=True)
        self.ff = _FeedForward(width, dropout)

    def forward(self, latents: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """latents (B, K, Di), cells (B, N, Di) -> latents (B, K, Di)."""
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_cells(cells), q], 1)  # (B, N + K, Di)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.ff(latents)


class Resampler(nn.Module):
    """K learned latents read the image through L :class:`PerceiverLayer` s -> (B, K, Di)."""

    def __init__(self, image_dim: int, dropout: float, shape: ConnectorShape, name: str):
        super().__init__()
        self.name = name
        self.positions = _CellPositions(image_dim)
        # Unit scale, as the attention's normalised input (see QFormerConnector.queries): at 0.02 the
        # first layer's near-uniform average swamped them (mean cosine similarity 0.61 between the
        # latents after it, 0.68 between the image tokens; 0.005 and 0.012 at unit scale).
        self.latents = nn.Parameter(torch.randn(shape.tokens, image_dim))
        self.layers = nn.ModuleList(PerceiverLayer(image_dim, dropout) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(image_dim)

    def forward(self, image: ImageFeatures) -> torch.Tensor:
        cells = self.positions(image, self.name)  # (B, 1 + N, Di)
        latents = self.latents.unsqueeze(0).expand(cells.size(0), -1, -1)  # (B, K, Di)
        for layer in self.layers:
            latents = layer(latents, cells)
        return self.norm(latents)


@FUSIONS.register("resampler")
class ResamplerConnector(Connector):
    """Flamingo's Perceiver Resampler as a prefix (the ``prefix`` fusion generalised: L layers, K
    tokens, latents that also attend to themselves), then a linear map to Dt: the language model
    reads K image tokens, however large the grid."""

    kind = PREFIX

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0, shape: ConnectorShape = ConnectorShape()):
        super().__init__()
        self.resampler = Resampler(image_dim, dropout, shape, "resampler")
        self.proj = nn.Linear(image_dim, text_dim)
        self.out_dim = text_dim

    def prefix(self, image: ImageFeatures) -> torch.Tensor:
        """image (B, N, Di) -> K image tokens (B, K, Dt)."""
        return self.proj(self.resampler(image))


class QFormerLayer(nn.Module):
    """One Q-Former layer (BLIP-2, query side): self-attention among the queries, cross-attention
    to the image cells, feed-forward; pre-norm residual blocks."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        heads = attention_heads(width)
        self.norm_self, self.norm_cross, self.norm_cells = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.ff = _FeedForward(width, dropout)

    def forward(self, queries: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """queries (B, K, Di), cells (B, N, Di) -> queries (B, K, Di)."""
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        kv = self.norm_cells(cells)
        queries = queries + self.cross_attn(self.norm_cross(queries), kv, kv, need_weights=False)[0]
        return queries + self.ff(queries)


@FUSIONS.register("qformer")
class QFormerConnector(Connector):
    """BLIP-2's Q-Former (the query transformer, without its text branch and pre-training losses):
    K learned queries through L :class:`QFormerLayer` s, then a linear map to Dt (BLIP-2: 32 queries,
    12 layers, the LLM frozen)."""

    kind = PREFIX

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0, shape: ConnectorShape = ConnectorShape()):
        super().__init__()
        self.positions = _CellPositions(image_dim)
        # Unit scale, as the self-attention's normalised input: at 0.02 (BERT's range) its first
        # update, a near-uniform average, swamped the queries (mean cosine similarity 0.73 between
        # them after it, against 0.005 at unit scale), every query read the image alike, and a frozen
        # LM's qformer stalled at validation BLEU-4 0.60 on shapes where resampler reached 0.82.
        self.queries = nn.Parameter(torch.randn(shape.tokens, image_dim))
        self.layers = nn.ModuleList(QFormerLayer(image_dim, dropout) for _ in range(shape.layers))
        self.norm = nn.LayerNorm(image_dim)
        self.proj = nn.Linear(image_dim, text_dim)
        self.out_dim = text_dim

    def prefix(self, image: ImageFeatures) -> torch.Tensor:
        """image (B, N, Di) -> K image tokens (B, K, Dt)."""
        cells = self.positions(image, "qformer")  # (B, 1 + N, Di)
        queries = self.queries.unsqueeze(0).expand(cells.size(0), -1, -1)  # (B, K, Di)
        for layer in self.layers:
            queries = layer(queries, cells)
        return self.proj(self.norm(queries))


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention dense block: ``x + tanh(a) r attn(LN x, media)``, then
    ``x + tanh(b) r FF(LN x)``, with the gates a and b starting at 0 (the block is the identity).

    One change from Flamingo: each update is scaled by ``r``, the root mean square of the hidden
    state it joins (per position, (B, T, 1)). A trained language model's hidden states grow through
    its blocks (the ``train-lm`` Llama: norm 0.8 at the embeddings, 12-40 after its first block), so
    an update at the block's initial scale is a small fraction of the state it should steer. Measured
    on ``shapes`` with that model frozen, 6 epochs: test BLEU-4 0.705 (CIDEr-D 5.01) with the scale,
    0.602 (3.55) without it. ``scaled=False`` is Flamingo's block (runs written before this change)."""

    def __init__(self, text_dim: int, media_dim: int, dropout: float, scaled: bool = True):
        super().__init__()
        self.scaled = scaled
        self.norm = nn.LayerNorm(text_dim)
        self.attn = nn.MultiheadAttention(text_dim, attention_heads(text_dim), dropout=dropout, batch_first=True,
                                          kdim=media_dim, vdim=media_dim)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = _FeedForward(text_dim, dropout)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """x (B, T, Dt), media (B, K, Dm) -> (B, T, Dt)."""
        dtype = x.dtype
        x = x.float()
        scale = x.pow(2).mean(-1, keepdim=True).sqrt() if self.scaled else 1.0  # (B, T, 1)
        x = x + scale * torch.tanh(self.attn_gate) * self.attn(self.norm(x), media, media, need_weights=False)[0]
        return (x + scale * torch.tanh(self.ff_gate) * self.ff(x)).to(dtype)


@FUSIONS.register("xattn")
class CrossAttentionConnector(Connector):
    """Flamingo: a Perceiver Resampler makes K media tokens of the image; a
    :class:`GatedCrossAttention` block before every k-th block of the language model lets the words
    read them (the language model's own blocks stay as they are). Needs an ``hf:`` decoder:
    :meth:`install` puts the blocks in place with forward pre-hooks, :meth:`attending` gives them
    the media of the rows being computed.
    """

    kind = CROSS

    def __init__(self, image_dim: int, text_dim: int, dropout: float = 0.0, shape: ConnectorShape = ConnectorShape()):
        super().__init__()
        self.resampler = Resampler(image_dim, dropout, shape, "xattn")
        self.every, self.scaled = shape.every, shape.scaled
        self.text_dim, self.image_dim, self.dropout = text_dim, image_dim, dropout
        self.blocks = nn.ModuleList()
        self.out_dim = text_dim
        self._media: torch.Tensor | None = None

    def media(self, image: ImageFeatures) -> torch.Tensor:
        """image (B, N, Di) -> media tokens (B, K, Di)."""
        return self.resampler(image)

    def install(self, layers: nn.ModuleList) -> None:
        """A gated block before every k-th of ``layers`` (the 1st, the (k+1)-th, ...)."""
        for index in range(0, len(layers), self.every):
            block = GatedCrossAttention(self.text_dim, self.image_dim, self.dropout, self.scaled)
            self.blocks.append(block)
            layers[index].register_forward_pre_hook(self._hook(block), with_kwargs=True)

    def _hook(self, block: GatedCrossAttention):
        def before_layer(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            if self._media is None:
                raise RuntimeError("xattn: the language model ran before attending() gave it media")
            if args:
                return (block(args[0], self._media),) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": block(kwargs["hidden_states"], self._media)}
        return before_layer

    def attending(self, media: torch.Tensor) -> None:
        """From now on the language model's rows read ``media`` (rows, K, Di). Kept after the forward
        pass: gradient checkpointing runs the blocks again in the backward pass."""
        self._media = media
