"""The captioner: image encoder -> fusion with word embeddings -> decoder -> next-word logits.

How the fusion enters depends on its kind (see :mod:`mmfuse.models.fusion`): ``position`` fusions
turn each word embedding into a fused input; ``attention`` attends over the grid with the decoder's
previous hidden state at every step; ``prefix`` fusions put image tokens before the words, read by
the decoder first (:meth:`Captioner.initial_state`).

Step-by-step decoding runs from a decoding state whose type says how the image enters each step
(:mod:`mmfuse.models.decoding_states`, beside this module): fused word inputs, attention over the
grid, or, at inference with a recurrent decoder and a fusion affine in the word, input gates
projected once per image and per word (the fast path).

Shape legend: B images, M captions (several per image), T positions, N grid cells, P prefix tokens,
V vocabulary, D widths.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mmfuse.config import ModelConfig
from mmfuse.data.vocab import BOS_ID, EOS_ID, IGNORE, PAD_ID
from mmfuse.models.connectors import connector_options
from mmfuse.models.decoders import DECODERS
from mmfuse.models.encoders import ImageFeatures, build_image_encoder
from mmfuse.models.decoding_states import AttentionState, DecodingState, FusedInputState, ProjectedInputState
from mmfuse.models.fusion import ATTENTION, FUSIONS, PREFIX
from mmfuse.models.parts import resolve_parts
from mmfuse.models.vision_towers import RebuiltFromBase


class SpecialIds(NamedTuple):
    """The token decoding starts from (fed to the first step) and the one that ends a caption."""

    start: int
    end: int


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
        self.special = SpecialIds(BOS_ID, EOS_ID)

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
            words = self.fusion(features, self.words(tokens), tokens != PAD_ID)  # (M, T, D)
            logits, _ = self.decoder(torch.cat([prefix, words], 1), None, self._bidirectional(prefix))
            return logits[:, prefix.size(1):]
        logits, _ = self.decode(features, tokens, self.initial_state(features))
        return logits

    @staticmethod
    def teacher_forcing(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's ``<bos> w1 .. wn <eos>`` ids (M, T) -> (what :meth:`forward` reads (M, T-1), the
        targets of its logits (M, T-1), padding as IGNORE)."""
        return tokens[:, :-1], tokens[:, 1:].masked_fill(tokens[:, 1:] == PAD_ID, IGNORE)

    def initial_state(self, features: ImageFeatures, cache: bool = False) -> DecodingState:
        """The decoder state before the first word: the image prefix read (prefix fusions), a state
        computed from the global image vector (attention, as in Show-Attend-Tell), else the decoder's
        fresh state. ``cache``: a Transformer decoder keeps a key/value cache (step-by-step decoding)."""
        if self.fusion.kind == ATTENTION:
            return AttentionState(self.decoder.state_from(self.fusion.initial_hidden(features)), self.fusion.keys(features))
        state = self.decoder.begin(cache)
        if self.fusion.kind != PREFIX:
            return FusedInputState(state)
        prefix = self.fusion.prefix(features)  # (B, P, D)
        _, state = self.decoder(prefix, state, self._bidirectional(prefix))
        return FusedInputState(state, image_in_state=True)

    def decoding_state(self, features: ImageFeatures, cache: bool = True) -> DecodingState:
        """The state generation starts from, one word at a time (:meth:`step`): a
        :class:`~mmfuse.models.decoding_states.ProjectedInputState` where the fusion and decoder
        allow it (inference only), else :meth:`initial_state`."""
        if ProjectedInputState.applies(self):
            return ProjectedInputState.start(self, features)
        return self.initial_state(features, cache)

    def read_prompt(self, features: ImageFeatures, prompts: torch.Tensor, state: DecodingState) -> DecodingState:
        """The state after reading ``prompts`` (B, P) (an answerer's question, all of one length)
        from ``state``; generation then starts by feeding ``<bos>``, the question/answer separator."""
        _, state = self.decode(features, prompts, state)
        return state

    def step_features(self, features: ImageFeatures, state: DecodingState) -> ImageFeatures:
        """What decoding steps read of the image features from ``state`` on (:meth:`decoding_state`):
        the ``attention`` fusion the grid and the pooled vector, position fusions the pooled vector
        only, prefix fusions and projected inputs nothing (the image is in the state). The rest is
        left out (zero width), so copying rows of it for beams costs nothing."""
        if self.fusion.kind == ATTENTION:
            return features
        return ImageFeatures(features.grid[:, :0], features.pooled[:, :0] if state.image_in_state else features.pooled)

    def decode(self, features: ImageFeatures, tokens: torch.Tensor, state: DecodingState) -> tuple[torch.Tensor, DecodingState]:
        """Run the decoder over ``tokens`` (M, T) from ``state`` -> logits (M, T, V), new state."""
        return state.advance(self, features, tokens)

    def attention_weights(self, features: ImageFeatures, tokens: torch.Tensor) -> torch.Tensor:
        """Where the ``attention`` fusion looked while reading ``tokens`` (M, T) -> weights (M, T, N).

        Row t is the attention over the grid when predicting the word after ``tokens[:, t]``; feed
        ``<bos>`` + a generated caption to get one map per generated word (heat-maps).
        """
        if self.fusion.kind != ATTENTION:
            raise ValueError(f"fusion {type(self.fusion).__name__} has no attention over the image")
        state = AttentionState(self.decoder.state_from(self.fusion.initial_hidden(features)), self.fusion.keys(features))
        return state.attend(self, features, self.words(tokens))[2]

    def step(self, features: ImageFeatures, last: torch.Tensor,
             state: DecodingState) -> tuple[torch.Tensor, DecodingState]:
        """One decoding step: last tokens (B,) -> log-probabilities (B, V), new state."""
        logits, state = self.decode(features, last.unsqueeze(1), state)  # (B, 1, V)
        return generation_log_probs(logits[:, -1]), state

    def reorder_state(self, state: DecodingState | None, index: torch.Tensor, same_images: bool = False) -> DecodingState | None:
        """Keep batch rows ``index`` of a decoding state (beam search, dropping finished images).

        ``same_images``: every row ``index`` picks shows the same image as the row it replaces (beams
        reordered within each image), so what was computed from the image alone stays as it is."""
        return None if state is None else state.reorder(self.decoder, index, same_images)

    def words(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (M, T) -> word embeddings (M, T, E) (zeros under the text ablation)."""
        words = self.embed_drop(self.embed(tokens))  # (M, T, E)
        return torch.zeros_like(words) if self.text_ablation else words

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: every tensor but a frozen pretrained tower's (rebuilt from its base)."""
        rebuilt = rebuilt_names(self.encoder)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(rebuilt)}

    def _bidirectional(self, prefix: torch.Tensor) -> int:
        return prefix.size(1) if self.fusion.bidirectional else 0


def rebuilt_names(encoder: nn.Module) -> tuple[str, ...]:
    """Tensor-name prefixes (in a captioner) of what ``encoder`` rebuilds from its base model."""
    if not isinstance(encoder, RebuiltFromBase):
        return ()
    return tuple(f"encoder.{prefix}" for prefix in encoder.rebuilt_prefixes())


def generation_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the next word (..., V) when generating: ``<pad>`` and ``<bos>`` are never emitted."""
    logits = logits.float().clone()
    logits[..., PAD_ID] = float("-inf")
    logits[..., BOS_ID] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def build_captioner(cfg: ModelConfig, vocab_size: int) -> Captioner:
    """A captioner with the parts named in ``cfg`` (unknown names list the valid ones)."""
    cfg = resolve_parts(cfg, "caption")
    encoder = build_image_encoder(cfg)
    extra = {"query_dim": cfg.hidden_dim} if FUSIONS.get(cfg.fusion).kind == ATTENTION else {}
    extra.update(connector_options(cfg.fusion, cfg))
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
