"""Caption decoders: fused states -> next-word logits, with a state that decoding can carry.

Every decoder has the constructor ``(input_dim, hidden_dim, vocab_size, num_layers, dropout)`` and:
``forward(x (B, T, F), state, bidirectional=0) -> (logits (B, T, V), state)``,
``reorder_state(state, index)`` (beam search), ``begin(cache)`` (the state of a fresh sequence for
step-by-step decoding; ``state=None`` also means "start of the sequence").
``bidirectional=P`` (Transformer only) lets the first P positions of a fresh sequence attend to each
other both ways: an image prefix read as in a prefix language model (SimVLM). Recurrent decoders
also have ``query(state, batch) -> (B, H)``, the top layer's hidden state, which the ``attention``
fusion attends with (Show, Attend and Tell), and, for decoding, ``input_projection()`` (the first
layer's input weights) with ``step_gates(gates, state)``: one step from input gates a caller has
projected itself (once per image and per word, when the fusion is affine in the word).

Shape legend: B batch, T positions, F fused width, H hidden width, L layers, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.errors import MmfuseError
from mmfuse.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder")

LSTMState = tuple[torch.Tensor, torch.Tensor]


def run_recurrent(rnn: nn.RNNBase, x, state=None):
    """``rnn(x, state)``, in fp32 when bf16 autocast is on for the CPU: oneDNN has no bf16 LSTM or
    GRU on CPUs without bf16 instructions (and recurrences accumulate rounding). On CUDA, autocast
    runs them in reduced precision through cuDNN as usual. ``x``: a tensor or a PackedSequence."""
    device = (x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x).device
    if device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return rnn(x, state)
    with torch.autocast("cpu", enabled=False):
        x = x._replace(data=x.data.float()) if isinstance(x, nn.utils.rnn.PackedSequence) else x.float()
        if state is not None:
            state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
        return rnn(x, state)


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
        hidden, state = run_recurrent(self.rnn, x, state)  # (B, T, H)
        return self.out(self.drop(hidden)), state

    @staticmethod
    def begin(cache: bool = True) -> None:
        """The state of a fresh sequence (None: zeros; ``cache`` only matters to Transformers)."""
        return None

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

    def input_projection(self, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's input weights (G, F) and the bias to add with them (G,): its input gates are
        ``x W^T + b`` (G = 4H for an LSTM, 3H for a GRU; an LSTM's b holds both of its biases)."""
        return getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"bias_ih_l{layer}")

    def step_gates(self, gates: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        """One step from the first layer's input gates (B, G) = ``x W^T + b`` (see
        :meth:`input_projection`) -> logits (B, V) and the new state, as ``forward`` on x (B, 1, F)
        would give them in eval mode (no dropout); the state is None or one from ``forward``/here."""
        if state is None:
            zeros = gates.new_zeros(self.rnn.num_layers, gates.size(0), self.rnn.hidden_size)  # (L, B, H)
            state = (zeros, zeros) if isinstance(self.rnn, nn.LSTM) else zeros
        layers = []
        for layer in range(self.rnn.num_layers):
            if layer:
                gates = F.linear(x, *self.input_projection(layer))
            layers.append(self._cell(gates, self._layer_state(state, layer), layer))
            x = layers[-1][0]  # (B, H)
        return self.out(x), self._stack(layers)

    def _hidden_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self.rnn, f"weight_hh_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}")

    @staticmethod
    def _layer_state(state, layer: int) -> tuple[torch.Tensor, ...]:
        """One layer's state as a tuple whose first tensor is its hidden state (B, H)."""
        return tuple(s[layer] for s in state) if isinstance(state, tuple) else (state[layer],)

    def _cell(self, gates: torch.Tensor, state: tuple[torch.Tensor, ...], layer: int) -> tuple[torch.Tensor, ...]:
        """A layer's new state from its input gates (B, G) and its state. Written with in-place
        operations on the tensors it makes: allocating less is a third of a step's time at 320 rows."""
        raise NotImplementedError

    @staticmethod
    def _stack(layers: list[tuple[torch.Tensor, ...]]):
        """The per-layer states of :meth:`_cell` as the state ``forward`` returns."""
        raise NotImplementedError


@DECODERS.register("lstm")
class LSTMDecoder(_RecurrentDecoder):
    """A stacked LSTM decoder; the state is (h, c), each (L, B, H)."""

    cell = nn.LSTM

    @staticmethod
    def reorder_state(state: LSTMState, index: torch.Tensor) -> LSTMState:
        """Keep batch rows ``index`` of the state (beam search)."""
        h, c = state
        return h.index_select(1, index), c.index_select(1, index)

    def input_projection(self, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = super().input_projection(layer)
        return weight, bias + self._hidden_weights(layer)[1]  # the cell adds both biases to the same sum

    def _cell(self, gates: torch.Tensor, state: tuple[torch.Tensor, ...], layer: int) -> tuple[torch.Tensor, ...]:
        """nn.LSTM's cell: gates (B, 4H) in the order i, f, g, o (both biases in them); state (h, c)."""
        gates = torch.addmm(gates, state[0], self._hidden_weights(layer)[0].t())
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, H)
        g = torch.tanh(g)
        gates.sigmoid_()  # i, f, o (g was read above)
        c = f.mul(state[1]).addcmul_(i, g)
        return torch.tanh(c).mul_(o), c

    @staticmethod
    def _stack(layers: list[tuple[torch.Tensor, ...]]) -> LSTMState:
        if len(layers) == 1:
            return layers[0][0].unsqueeze(0), layers[0][1].unsqueeze(0)
        return torch.stack([h for h, _ in layers]), torch.stack([c for _, c in layers])


@DECODERS.register("gru")
class GRUDecoder(_RecurrentDecoder):
    """A stacked GRU decoder; the state is the hidden tensor (L, B, H)."""

    cell = nn.GRU

    @staticmethod
    def reorder_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Keep batch rows ``index`` of the state (beam search)."""
        return state.index_select(1, index)

    def _cell(self, gates: torch.Tensor, state: tuple[torch.Tensor, ...], layer: int) -> tuple[torch.Tensor, ...]:
        """nn.GRU's cell: input gates (B, 3H) in the order r, z, n; state (h,)."""
        hidden = F.linear(state[0], *self._hidden_weights(layer))  # (B, 3H)
        width = hidden.size(1) // 3
        r, z = hidden[:, :2 * width].add_(gates[:, :2 * width]).sigmoid_().chunk(2, dim=1)  # each (B, H)
        n = hidden[:, 2 * width:].mul_(r).add_(gates[:, 2 * width:]).tanh_()
        return (torch.lerp(n, state[0], z),)  # (1 - z) n + z h

    @staticmethod
    def _stack(layers: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        return layers[0][0].unsqueeze(0) if len(layers) == 1 else torch.stack([h for h, in layers])


def attention_heads(width: int) -> int:
    """Heads of every multi-head attention of ``width`` here: 4, or 1 when width is not divisible by 4."""
    return 4 if width % 4 == 0 else 1


def transformer_blocks(width: int, num_layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm Transformer blocks of ``width`` (heads: :func:`attention_heads`)."""
    layer = nn.TransformerEncoderLayer(width, attention_heads(width), 4 * width, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)


class TransformerState(NamedTuple):
    """Decoding state without a cache: the inputs so far (re-run at every step) and the length of the
    leading block that attends both ways (0 for a plain causal sequence)."""

    seq: torch.Tensor  # (B, S, F)
    bidirectional: int


class KVCache(NamedTuple):
    """Decoding state with a key/value cache: every block's keys and values of the positions so far,
    so a step computes only its new positions. ``KVCache()`` is the empty cache (a fresh sequence)."""

    keys: tuple[torch.Tensor, ...] = ()  # per block (B, heads, S, H/heads)
    values: tuple[torch.Tensor, ...] = ()
    length: int = 0  # S


@DECODERS.register("transformer")
class TransformerDecoder(nn.Module):
    """A causal (decoder-only) Transformer over the fused states, GPT style: pre-norm blocks, learned
    positions, a causal mask, a linear word classifier.

    Two decoding states: :class:`KVCache` (``begin(cache=True)``) keeps every block's keys and
    values, so a step costs one new position; :class:`TransformerState` keeps the inputs and re-runs
    them (a step costs O(S)). Both give the same logits up to float rounding. Training (``state=None``)
    runs the whole sequence through PyTorch's fused Transformer layers; the cached path reads the same
    weights and is for inference (it applies no dropout).

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

    @staticmethod
    def begin(cache: bool = True) -> KVCache | None:
        """The state of a fresh sequence: an empty key/value cache, or None (re-run every step)."""
        return KVCache() if cache else None

    def forward(self, x: torch.Tensor, state: TransformerState | KVCache | None = None,
                bidirectional: int = 0) -> tuple[torch.Tensor, TransformerState | KVCache]:
        """x (B, T, F) new positions after ``state`` -> logits (B, T, V) and the state with S = t + T positions.

        ``bidirectional`` (only for a fresh sequence) is P: positions < P attend to each other both ways.
        """
        if isinstance(state, KVCache):
            return self._cached(x, state, bidirectional)
        if state is not None:
            seq, bidirectional = torch.cat([state.seq, x], dim=1), state.bidirectional  # (B, S, F)
        else:
            seq = x
        length = self._check_length(seq.size(1))
        h = self.inp(seq) + self.pos(torch.arange(length, device=seq.device))  # (B, S, H)
        mask = self._mask(0, length, bidirectional, seq.device)  # (S, S)
        h = self.norm(self.blocks(h, mask=mask, is_causal=not bidirectional))  # (B, S, H)
        return self.out(h[:, -x.size(1):]), TransformerState(seq, bidirectional)

    def _cached(self, x: torch.Tensor, cache: KVCache, bidirectional: int) -> tuple[torch.Tensor, KVCache]:
        """The new positions x (B, T, F) attend to the cached ones and to each other (causally)."""
        start, new = cache.length, x.size(1)
        self._check_length(start + new)
        h = self.inp(x) + self.pos(torch.arange(start, start + new, device=x.device))  # (B, T, H)
        mask = None if new == 1 else self._mask(start, new, bidirectional if start == 0 else 0, x.device)  # (T, S)
        keys, values = [], []
        for i, layer in enumerate(self.blocks.layers):
            past = (cache.keys[i], cache.values[i]) if cache.length else None
            h, k, v = _cached_block(layer, h, past, mask)
            keys.append(k)
            values.append(v)
        return self.out(self.norm(h)), KVCache(tuple(keys), tuple(values), start + new)

    def _check_length(self, length: int) -> int:
        if length > self.max_positions:
            raise MmfuseError(f"the transformer decoder handles at most {self.max_positions} positions, got a "
                              f"sequence of {length} (use a smaller --max-length or drop longer captions)")
        return length

    @staticmethod
    def _mask(start: int, new: int, bidirectional: int, device: torch.device) -> torch.Tensor:
        """Additive mask (T, S) of new positions start..start+T-1 over positions 0..S-1: causal, and
        positions < ``bidirectional`` see each other both ways."""
        rows = torch.arange(start, start + new, device=device).unsqueeze(1)  # (T, 1)
        cols = torch.arange(start + new, device=device).unsqueeze(0)  # (1, S)
        allowed = (cols <= rows) | ((rows < bidirectional) & (cols < bidirectional))
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))

    @staticmethod
    def reorder_state(state: TransformerState | KVCache, index: torch.Tensor) -> TransformerState | KVCache:
        """Keep batch rows ``index`` of the state (beam search, dropping finished images)."""
        if isinstance(state, KVCache):
            return KVCache(tuple(k.index_select(0, index) for k in state.keys),
                           tuple(v.index_select(0, index) for v in state.values), state.length)
        return TransformerState(state.seq.index_select(0, index), state.bidirectional)


def _cached_block(layer: nn.TransformerEncoderLayer, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                  mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pre-norm block of ``layer``'s weights over new positions h (B, T, H), with the past keys
    and values (B, heads, t, H/heads) -> new h (B, T, H) and all keys, values (B, heads, t + T, H/heads)."""
    attn = layer.self_attn
    heads = attn.num_heads
    q, k, v = F.linear(layer.norm1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # each (B, T, H)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, H/heads)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, heads, S, H/heads)
    if mask is None and q.size(2) == 1 and q.device.type == "cpu":  # one new position: 2-3x faster than SDPA's CPU kernel
        weights = torch.softmax((q @ k.transpose(-1, -2)) * q.size(-1) ** -0.5, dim=-1)  # (B, heads, 1, S)
        context = weights @ v  # (B, heads, 1, H/heads)
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, H/heads)
    h = h + attn.out_proj(context.transpose(1, 2).flatten(2))
    h = h + layer.linear2(layer.activation(layer.linear1(layer.norm2(h))))
    return h, k, v
