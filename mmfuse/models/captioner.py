"""The captioner: image encoder -> fusion with word embeddings -> decoder -> next-word logits.

How the fusion enters depends on its kind (see :mod:`mmfuse.models.fusion`): ``position`` fusions
turn each word embedding into a fused input; ``attention`` attends over the grid with the decoder's
previous hidden state at every step; ``prefix`` fusions put image tokens before the words, read by
the decoder first (:meth:`Captioner.initial_state`).

Decoding (inference, eval mode) with a recurrent decoder and a fusion affine in the word (concat,
sum) skips the fusion and the decoder's input projection at every step: the first layer's input
gates are an image term, computed once per image, plus a word term, computed once per vocabulary
word (:class:`ProjectedInputState`). On 2 CPU cores an LSTM step over 320 beams took 2.8 ms this
way, 5.2 ms through nn.LSTM.

Shape legend: B images, M captions (several per image), T positions, N grid cells, P prefix tokens,
V vocabulary, D widths.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.data.vocab import BOS_ID, PAD_ID
from mmfuse.models.decoders import DECODERS
from mmfuse.models.encoders import ImageFeatures, build_image_encoder
from mmfuse.models.fusion import ATTENTION, FUSIONS, PREFIX
from mmfuse.models.parts import resolve_parts


class AttentionState(NamedTuple):
    """Decoding state with the ``attention`` fusion: the decoder's state and the grid's attention
    keys (M, N, A), computed once per image rather than at every step."""

    decoder: Any
    keys: torch.Tensor


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


class Captioner(nn.Module):
    """Generic encoder / fusion / decoder composition; :func:`build_captioner` makes one from config.

    ``text_ablation = True`` zeroes the word inputs (an ablation: how much the decoder leans on the
    words it has already produced).
    """

    def __init__(self, encoder: nn.Module, fusion: nn.Module, decoder: nn.Module, vocab_size: int, embed_dim: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.embed_drop = nn.Dropout(dropout)
        self.fusion = fusion
        self.decoder = decoder
        self.text_ablation = False

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
        if self.fusion.kind == PREFIX:  # prefix and words in one pass
            prefix = self.fusion.prefix(features)  # (M, P, D)
            words = self.fusion(features, self._words(tokens), tokens != PAD_ID)  # (M, T, D)
            logits, _ = self.decoder(torch.cat([prefix, words], 1), None, self._bidirectional(prefix))
            return logits[:, prefix.size(1):]
        logits, _ = self.decode(features, tokens, self.initial_state(features))
        return logits

    def initial_state(self, features: ImageFeatures, cache: bool = False) -> Any:
        """The decoder state before the first word: the image prefix read (prefix fusions), a state
        computed from the global image vector (attention, as in Show-Attend-Tell), else the decoder's
        fresh state. ``cache``: a Transformer decoder keeps a key/value cache (step-by-step decoding)."""
        if self.fusion.kind == ATTENTION:
            return AttentionState(self.decoder.state_from(self.fusion.initial_hidden(features)), self.fusion.keys(features))
        state = self.decoder.begin(cache)
        if self.fusion.kind != PREFIX:
            return state
        prefix = self.fusion.prefix(features)  # (B, P, D)
        _, state = self.decoder(prefix, state, self._bidirectional(prefix))
        return state

    def decoding_state(self, features: ImageFeatures, cache: bool = True) -> Any:
        """The state generation starts from, one word at a time (:meth:`step`): a
        :class:`ProjectedInputState` where the fusion and decoder allow it (inference only), else
        :meth:`initial_state`."""
        return self._projected_state(features) if self._projects_input() else self.initial_state(features, cache)

    def step_features(self, features: ImageFeatures, state: Any) -> ImageFeatures:
        """What decoding steps read of the image features from ``state`` on (:meth:`decoding_state`):
        the ``attention`` fusion the grid and the pooled vector, position fusions the pooled vector
        only, prefix fusions and projected inputs nothing (the image is in the state). The rest is
        left out (zero width), so copying rows of it for beams costs nothing."""
        if self.fusion.kind == ATTENTION:
            return features
        image_in_state = self.fusion.kind == PREFIX or isinstance(state, ProjectedInputState)
        return ImageFeatures(features.grid[:, :0], features.pooled[:, :0] if image_in_state else features.pooled)

    def decode(self, features: ImageFeatures, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Run the decoder over ``tokens`` (M, T) from ``state`` -> logits (M, T, V), new state."""
        if isinstance(state, ProjectedInputState):
            return self._projected_steps(tokens, state)
        words = self._words(tokens)  # (M, T, E)
        if self.fusion.kind == ATTENTION:
            logits, state, _ = self._attend_steps(features, words, state)
            return logits, state
        fused = self.fusion(features, words, tokens != PAD_ID)  # (M, T, F)
        return self.decoder(fused, state)

    def attention_weights(self, features: ImageFeatures, tokens: torch.Tensor) -> torch.Tensor:
        """Where the ``attention`` fusion looked while reading ``tokens`` (M, T) -> weights (M, T, N).

        Row t is the attention over the grid when predicting the word after ``tokens[:, t]``; feed
        ``<bos>`` + a generated caption to get one map per generated word (heat-maps).
        """
        if self.fusion.kind != ATTENTION:
            raise ValueError(f"fusion {type(self.fusion).__name__} has no attention over the image")
        _, _, weights = self._attend_steps(features, self._words(tokens), self.initial_state(features))
        return weights

    def step(self, features: ImageFeatures, last: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One decoding step: last tokens (B,) -> log-probabilities (B, V), new state."""
        logits, state = self.decode(features, last.unsqueeze(1), state)  # (B, 1, V)
        return generation_log_probs(logits[:, -1]), state

    def reorder_state(self, state: Any, index: torch.Tensor, same_images: bool = False) -> Any:
        """Keep batch rows ``index`` of a decoding state (beam search, dropping finished images).

        ``same_images``: every row ``index`` picks shows the same image as the row it replaces (beams
        reordered within each image), so what was computed from the image alone stays as it is."""
        if state is None:  # a fresh sequence: nothing to reorder
            return None
        if isinstance(state, AttentionState):
            keys = state.keys if same_images else state.keys.index_select(0, index)
            return AttentionState(self.decoder.reorder_state(state.decoder, index), keys)
        if isinstance(state, ProjectedInputState):
            image = state.image if same_images else state.image.index_select(0, index)
            inner = None if state.decoder is None else self.decoder.reorder_state(state.decoder, index)
            return ProjectedInputState(inner, image, state.words)
        return self.decoder.reorder_state(state, index)

    def _projects_input(self) -> bool:
        """Whether decoding can use :class:`ProjectedInputState`: a fusion affine in the word, a
        decoder that steps from projected gates, inference (eval mode, no gradients), words read."""
        return (hasattr(self.fusion, "affine_parts") and hasattr(self.decoder, "step_gates") and not self.training
                and not torch.is_grad_enabled() and not self.text_ablation)

    def _projected_state(self, features: ImageFeatures) -> ProjectedInputState:
        """The decoder's first-layer input gates split into the image's (B, G) and the words' shares."""
        weight, bias, image_term = self.fusion.affine_parts(features)  # (F, E), (F,), (B, F)
        w_in, b_in = self.decoder.input_projection()  # (G, F), (G,)
        image = F.linear(image_term, w_in, torch.addmv(b_in, w_in, bias))  # (B, G)
        return ProjectedInputState(None, image, WordGates(self.embed.weight, w_in @ weight))

    def _projected_steps(self, tokens: torch.Tensor, state: ProjectedInputState) -> tuple[torch.Tensor, Any]:
        """tokens (M, T) read one step at a time from projected gates -> logits (M, T, V), new state."""
        logits, inner = [], state.decoder
        for t in range(tokens.size(1)):
            out, inner = self.decoder.step_gates(state.image + state.words(tokens[:, t]), inner)  # (M, V)
            logits.append(out)
        return torch.stack(logits, 1), ProjectedInputState(inner, state.image, state.words)

    def _words(self, tokens: torch.Tensor) -> torch.Tensor:
        words = self.embed_drop(self.embed(tokens))  # (M, T, E)
        return torch.zeros_like(words) if self.text_ablation else words

    def _bidirectional(self, prefix: torch.Tensor) -> int:
        return prefix.size(1) if self.fusion.bidirectional else 0

    def _attend_steps(self, features: ImageFeatures, words: torch.Tensor,
                      state: "AttentionState") -> tuple[torch.Tensor, "AttentionState", torch.Tensor]:
        """Show-Attend-Tell: at each step attend with the decoder's previous hidden state.

        words (M, T, E) -> logits (M, T, V), state, attention weights (M, T, N).
        """
        logits, weights = [], []
        inner = state.decoder
        for t in range(words.size(1)):
            query = self.decoder.query(inner, words.size(0))  # (M, H)
            fused, alpha = self.fusion.step(features, words[:, t], query, state.keys)  # (M, F), (M, N)
            out, inner = self.decoder(fused.unsqueeze(1), inner)  # (M, 1, V)
            logits.append(out)
            weights.append(alpha)
        return torch.cat(logits, 1), AttentionState(inner, state.keys), torch.stack(weights, 1)


def generation_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next word (..., V) when generating: ``<pad>`` and ``<bos>`` are never emitted."""
    logits = logits.float().clone()
    logits[..., PAD_ID] = float("-inf")
    logits[..., BOS_ID] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def check_parts(cfg: ModelConfig) -> None:
    """Fail fast, listing the valid names, when ``cfg`` names an unknown part or a pairing that
    does not make sense."""
    resolve_parts(cfg, "caption")


def build_captioner(cfg: ModelConfig, vocab_size: int) -> Captioner:
    """A captioner with the parts named in ``cfg`` (unknown names list the valid ones)."""
    cfg = resolve_parts(cfg, "caption")
    encoder = build_image_encoder(cfg)
    extra = {"query_dim": cfg.hidden_dim} if FUSIONS.get(cfg.fusion).kind == ATTENTION else {}
    fusion = FUSIONS.create(cfg.fusion, image_dim=encoder.out_dim, text_dim=cfg.embed_dim, dropout=cfg.dropout, **extra)
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
