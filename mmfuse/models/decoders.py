"""Caption decoders: fused states -> next-word logits, with a state that decoding can carry.

Every decoder has the constructor ``(input_dim, hidden_dim, vocab_size, num_layers, dropout)`` and:
``forward(x (B, T, F), state) -> (logits (B, T, V), state)``, ``reorder_state(state, index)``
(for beam search). ``state=None`` means "start of the sequence".

Shape legend: B batch, T positions, F fused width, H hidden width, L layers, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder")

LSTMState = tuple[torch.Tensor, torch.Tensor]


@DECODERS.register("lstm")
class LSTMDecoder(nn.Module):
    """A stacked LSTM with a linear word classifier on top.

    Args:
        input_dim: F, width of the fused states.
        hidden_dim: H.
        vocab_size: V.
        num_layers: L.
        dropout: dropout on the LSTM outputs (and between layers).
    """

    def __init__(self, input_dim: int, hidden_dim: int, vocab_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """x (B, T, F) -> logits (B, T, V) and state (h, c), each (L, B, H)."""
        hidden, state = self.lstm(x, state)  # (B, T, H)
        return self.out(self.drop(hidden)), state

    @staticmethod
    def reorder_state(state: LSTMState, index: torch.Tensor) -> LSTMState:
        """Keep batch rows ``index`` of the state (beam search)."""
        h, c = state
        return h.index_select(1, index), c.index_select(1, index)


@DECODERS.register("gru")
class GRUDecoder(nn.Module):
    """A stacked GRU with a linear word classifier on top (same arguments as ``lstm``).

    The state is the hidden tensor (L, B, H).
    """

    def __init__(self, input_dim: int, hidden_dim: int, vocab_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden_dim, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, F) -> logits (B, T, V) and state (L, B, H)."""
        hidden, state = self.gru(x, state)  # (B, T, H)
        return self.out(self.drop(hidden)), state

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Keep batch rows ``index`` of the state (beam search)."""
        return state.index_select(1, index)
