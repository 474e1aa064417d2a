"""Decoding states of the captioner: how the image enters each step of step-by-step decoding, one
class per way, each advancing and reordering itself (no dispatch on state types in the model).

- :class:`FusedInputState`: the fusion turns each word embedding into the decoder's input (position
  fusions), or the image prefix is already in the decoder's state (prefix fusions);
- :class:`AttentionState`: Show-Attend-Tell attention over the grid with the decoder's previous
  hidden state, the grid's keys computed once per image;
- :class:`ProjectedInputState`: the fast inference path of a recurrent decoder reading a fusion
  affine in the word (concat, sum): the fusion and the decoder's input projection are skipped at
  every step; the first layer's input gates are an image term, computed once per image, plus a word
  term, computed once per vocabulary word. On 2 CPU cores an LSTM step over 320 beams took 2.8 ms
  this way, 5.2 ms through nn.LSTM.

Shape legend: M rows (captions or beams), T positions, N grid cells, A attention width, G gates,
V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.data.vocab import PAD_ID
from mmfuse.models.encoders import ImageFeatures

if TYPE_CHECKING:
    from mmfuse.models.captioner import Captioner


class DecodingState(Protocol):
    """A captioner's state between decoding steps."""

    @property
    def image_in_state(self) -> bool:
        """Steps read nothing of the image features: the image is in the state."""

    def advance(self, model: "Captioner", features: ImageFeatures,
                tokens: torch.Tensor) -> tuple[torch.Tensor, "DecodingState"]:
        """Read ``tokens`` (M, T) -> logits (M, T, V) and the state after them."""

    def reorder(self, decoder: nn.Module, index: torch.Tensor, same_images: bool) -> "DecodingState":
        """Keep rows ``index`` (``same_images``: each row keeps showing the same image)."""


class FusedInputState(NamedTuple):
    """The decoder's own state; each word is fused with the image before the decoder reads it."""

    decoder: Any
    image_in_state: bool = False  # prefix fusions: the image tokens were read into ``decoder``

    def advance(self, model: "Captioner", features: ImageFeatures,
                tokens: torch.Tensor) -> tuple[torch.Tensor, "FusedInputState"]:
        fused = model.fusion(features, model.words(tokens), tokens != PAD_ID)  # (M, T, F)
        logits, inner = model.decoder(fused, self.decoder)
        return logits, FusedInputState(inner, self.image_in_state)

    def reorder(self, decoder: nn.Module, index: torch.Tensor, same_images: bool) -> "FusedInputState":
        inner = None if self.decoder is None else decoder.reorder_state(self.decoder, index)
        return FusedInputState(inner, self.image_in_state)


class AttentionState(NamedTuple):
    """Decoding state with the ``attention`` fusion: the decoder's state and the grid's attention
    keys (M, N, A), computed once per image rather than at every step."""

    decoder: Any
    keys: torch.Tensor
    image_in_state: bool = False

    def advance(self, model: "Captioner", features: ImageFeatures,
                tokens: torch.Tensor) -> tuple[torch.Tensor, "AttentionState"]:
        logits, state, _ = self.attend(model, features, model.words(tokens))
        return logits, state

    def attend(self, model: "Captioner", features: ImageFeatures,
               words: torch.Tensor) -> tuple[torch.Tensor, "AttentionState", torch.Tensor]:
        """Show-Attend-Tell: at each step attend with the decoder's previous hidden state.

        words (M, T, E) -> logits (M, T, V), state, attention weights (M, T, N).
        """
        logits, weights, inner = [], [], self.decoder
        for t in range(words.size(1)):
            query = model.decoder.query(inner, words.size(0))  # (M, H)
            fused, alpha = model.fusion.step(features, words[:, t], query, self.keys)  # (M, F), (M, N)
            out, inner = model.decoder(fused.unsqueeze(1), inner)  # (M, 1, V)
            logits.append(out)
            weights.append(alpha)
        return torch.cat(logits, 1), AttentionState(inner, self.keys), torch.stack(weights, 1)

    def reorder(self, decoder: nn.Module, index: torch.Tensor, same_images: bool) -> "AttentionState":
        keys = self.keys if same_images else self.keys.index_select(0, index)
        return AttentionState(decoder.reorder_state(self.decoder, index), keys)


class WordGates:
    """The first decoder layer's input gates of each word, ``embedding W^T`` (G,), each word's
    computed the first time it is read and then kept: a decoding pass reads few distinct words.

    Args:
        embeddings: the word embeddings (V, Dt).
        weight: (G, Dt), the fusion's text weight composed with the decoder's input weights.
    """

    def __init__(self, embeddings: torch.Tensor, weight: torch.Tensor):
        self.embeddings, self.weight = embeddings, weight
        self.table = embeddings.new_empty(embeddings.size(0), weight.size(0))  # (V, G)
        self.known = torch.zeros(embeddings.size(0), dtype=torch.bool, device=embeddings.device)  # (V,)

    def __call__(self, words: torch.Tensor) -> torch.Tensor:
        """words (B,) -> their gates (B, G)."""
        new = words[~self.known.index_select(0, words)]  # (index_select: ~8x faster than indexing here)
        if new.numel():
            new = new.unique()
            self.table[new] = self.embeddings.index_select(0, new) @ self.weight.t()
            self.known[new] = True
        return self.table.index_select(0, words)


class ProjectedInputState(NamedTuple):
    """Decoding state of a recurrent decoder reading an affine fusion (see the module doc): the
    decoder's state, the image's share of the first layer's input gates (B, G) and the words'."""

    decoder: Any
    image: torch.Tensor
    words: WordGates
    image_in_state: bool = True

    @staticmethod
    def applies(model: "Captioner") -> bool:
        """Whether ``model`` can decode this way: a fusion affine in the word, a decoder that steps
        from projected gates, inference (eval mode, no gradients), words read."""
        return (hasattr(model.fusion, "affine_parts") and hasattr(model.decoder, "step_gates") and not model.training
                and not torch.is_grad_enabled() and not model.text_ablation)

    @staticmethod
    def start(model: "Captioner", features: ImageFeatures) -> "ProjectedInputState":
        """The decoder's first-layer input gates split into the image's (B, G) and the words' shares."""
        weight, bias, image_term = model.fusion.affine_parts(features)  # (F, E), (F,), (B, F)
        w_in, b_in = model.decoder.input_projection()  # (G, F), (G,)
        image = F.linear(image_term, w_in, torch.addmv(b_in, w_in, bias))  # (B, G)
        return ProjectedInputState(None, image, WordGates(model.embed.weight, w_in @ weight))

    def advance(self, model: "Captioner", features: ImageFeatures,
                tokens: torch.Tensor) -> tuple[torch.Tensor, "ProjectedInputState"]:
        """tokens (M, T) read one step at a time from projected gates -> logits (M, T, V), new state."""
        logits, inner = [], self.decoder
        for t in range(tokens.size(1)):
            out, inner = model.decoder.step_gates(self.image + self.words(tokens[:, t]), inner)  # (M, V)
            logits.append(out)
        return torch.stack(logits, 1), ProjectedInputState(inner, self.image, self.words)

    def reorder(self, decoder: nn.Module, index: torch.Tensor, same_images: bool) -> "ProjectedInputState":
        image = self.image if same_images else self.image.index_select(0, index)
        inner = None if self.decoder is None else decoder.reorder_state(self.decoder, index)
        return ProjectedInputState(inner, image, self.words)
