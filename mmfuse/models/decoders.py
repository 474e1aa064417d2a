"""Caption decoders: fused states -> next-word logits, with a state that decoding can carry.

Every decoder has the constructor ``(input_dim, hidden_dim, vocab_size, num_layers, dropout)`` and:
``forward(x (B, T, F), state, bidirectional=0) -> (logits (B, T, V), state)``,
``reorder_state(state, index)`` (for beam search). ``state=None`` means "start of the sequence".
``bidirectional=P`` (Transformer only) lets the first P positions of a fresh sequence attend to each
other both ways: an image prefix read as in a prefix language model (SimVLM). Recurrent decoders
also have ``query(state, batch) -> (B, H)``, the top layer's hidden state, which the ``attention``
fusion attends with (Show, Attend and Tell).

Shape legend: B batch, T positions, F fused width, H hidden width, L layers, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mmfuse.errors import MmfuseError
from mmfuse.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder")

LSTMState = tuple[torch.Tensor, torch.Tensor]


class _RecurrentDecoder(nn.Module):
    """A stacked recurrent network (``cell``) with a linear word classifier on top.

    Args:
        input_dim: F, width of the fused states.
        hidden_dim: H.
        vocab_size: V.
        num_layers: L.
        dropout: dropout on the recurrent outputs (and between layers).
    """

    cell: type[nn.RNNBase]

    def __init__(self, input_dim: int, hidden_dim: int, vocab_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.rnn = self.cell(input_dim, hidden_dim, num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, state=None, bidirectional: int = 0):
        """x (B, T, F) -> logits (B, T, V) and the new state (each tensor (L, B, H))."""
        if bidirectional:
            raise MmfuseError(f"a {type(self).__name__} reads left to right; it cannot attend to a prefix both ways")
        hidden, state = self.rnn(x, state)  # (B, T, H)
        return self.out(self.drop(hidden)), state

    def state_from(self, hidden: torch.Tensor):
        """A starting state whose hidden state is ``hidden`` (B, H) in every layer (cells at zero)."""
        h = hidden.unsqueeze(0).repeat(self.rnn.num_layers, 1, 1).contiguous()  # (L, B, H)
        return (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h

    def query(self, state, batch: int) -> torch.Tensor:
        """The top layer's hidden state (B, H); zeros before the first step."""
        if state is None:
            return self.out.weight.new_zeros(batch, self.rnn.hidden_size)
        h = state[0] if isinstance(state, tuple) else state  # (L, B, H)
        return h[-1]


@DECODERS.register("lstm")
class LSTMDecoder(_RecurrentDecoder):
    """A stacked LSTM decoder; the state is (h, c), each (L, B, H)."""

    cell = nn.LSTM

    @staticmethod
    def reorder_state(state: LSTMState, index: torch.Tensor) -> LSTMState:
        """Keep batch rows ``index`` of the state (beam search)."""
        h, c = state
        return h.index_select(1, index), c.index_select(1, index)


@DECODERS.register("gru")
class GRUDecoder(_RecurrentDecoder):
    """A stacked GRU decoder; the state is the hidden tensor (L, B, H)."""

    cell = nn.GRU

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Keep batch rows ``index`` of the state (beam search)."""
        return state.index_select(1, index)


def attention_heads(width: int) -> int:
    """Heads of every multi-head attention of ``width`` here: 4, or 1 when width is not divisible by 4."""
    return 4 if width % 4 == 0 else 1


def transformer_blocks(width: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm Transformer blocks of ``width`` (heads: :func:`attention_heads`)."""
    layer = nn.TransformerEncoderLayer(width, attention_heads(width), 4 * width, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class TransformerState(NamedTuple):
    """What a Transformer decoder carries between steps: the inputs so far and the length of the
    leading block that attends both ways (0 for a plain causal sequence)."""

    seq: torch.Tensor  # (B, S, F)
    bidirectional: int


@DECODERS.register("transformer")
class TransformerDecoder(nn.Module):
    """A causal (decoder-only) Transformer over the fused states, GPT style: pre-norm blocks, learned
    positions, a causal mask, a linear word classifier.

    Step-by-step decoding keeps the fused inputs seen so far as its state and re-runs them each step
    (no key/value cache yet: a step costs O(t), the whole caption O(T^2)).

    Args:
        input_dim: F. hidden_dim: model width H (heads: 4, or 1 when H is not divisible by 4).
        vocab_size: V. num_layers: blocks. dropout: attention and residual dropout.
    """

    max_positions = 128

    def __init__(self, input_dim: int, hidden_dim: int, vocab_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(input_dim, hidden_dim)
        self.pos = nn.Embedding(self.max_positions, hidden_dim)
        self.blocks = transformer_blocks(hidden_dim, num_layers, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, state: TransformerState | None = None,
                bidirectional: int = 0) -> tuple[torch.Tensor, TransformerState]:
        """x (B, T, F) new positions after ``state`` -> logits (B, T, V), state with S = t + T positions.

        ``bidirectional`` (only for a fresh sequence) is P: positions < P attend to each other both ways.
        """
        if state is not None:
            seq, bidirectional = torch.cat([state.seq, x], dim=1), state.bidirectional  # (B, S, F)
        else:
            seq = x
        length = seq.size(1)
        if length > self.max_positions:
            raise MmfuseError(f"the transformer decoder handles at most {self.max_positions} positions, got a "
                              f"sequence of {length} (use a smaller --max-length or drop longer captions)")
        h = self.inp(seq) + self.pos(torch.arange(length, device=seq.device))  # (B, S, H)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=seq.device)  # (S, S)
        if bidirectional:
            mask[:bidirectional, :bidirectional] = 0.0
        h = self.norm(self.blocks(h, mask=mask, is_causal=not bidirectional))  # (B, S, H)
        return self.out(h[:, -x.size(1):]), TransformerState(seq, bidirectional)

    @staticmethod
    def reorder_state(state: TransformerState, index: torch.Tensor) -> TransformerState:
        """Keep batch rows ``index`` of the state (beam search)."""
        return TransformerState(state.seq.index_select(0, index), state.bidirectional)
