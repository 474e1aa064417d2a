"""N-grams of a whole evaluation as integer arrays, shared by the caption metrics.

Every 1..4-gram of every caption (hypotheses and references together, so ids are shared) gets an
integer id. Each order keeps one entry per distinct (sentence, n-gram) with its count, sorted by
n-gram, then image, with each image's hypothesis before its references: the entries of one
(n-gram, image) pair are one contiguous *group*. BLEU's clipping (the most a single reference holds),
CIDEr-D's document frequencies and its hypothesis-reference products are then reductions over groups,
with numpy, and one sort per order builds it all (profiled: the sorts were most of the time when each
order took two, one for n-gram ids and one for the (sentence, n-gram) pairs).

Sentences: the N hypotheses first (sentence i belongs to image i), then every image's references in
image order.

Shape legend: N images, R references in all, S = N + R sentences, T tokens, P_k positions where a
k-gram starts, E_k entries, Q_k groups, G_k distinct k-grams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mmfuse.metrics.ptb import TokenIds

Tokens = Sequence[str]
MAX_N = 4


@dataclass(frozen=True)
class Order:
    """The distinct (sentence, k-gram) entries of one order, grouped by (k-gram, image)."""

    gram: np.ndarray  # (E,) k-gram id, 0 .. size-1
    image: np.ndarray  # (E,)
    sent: np.ndarray  # (E,) sentence index
    is_hyp: np.ndarray  # (E,) bool: the entry is a hypothesis's
    count: np.ndarray  # (E,) occurrences in the sentence
    group: np.ndarray  # (E,) group index, 0 .. len(starts)-1, non-decreasing
    starts: np.ndarray  # (Q,) first entry of each group
    size: int  # G


@dataclass(frozen=True)
class NgramTable:
    lengths: np.ndarray  # (S,) tokens per sentence
    ref_image: np.ndarray  # (R,) the image of each reference
    orders: list[Order]  # orders[k] holds the (k+1)-grams

    @property
    def images(self) -> int:
        return len(self.lengths) - len(self.ref_image)


def build_table(tokens: TokenIds, refs_per_image: np.ndarray, max_n: int = MAX_N) -> NgramTable:
    """The n-gram table of ``tokens``: N hypotheses, then the references, ``refs_per_image[i]`` of them
    for image i, in image order."""
    n = len(refs_per_image)
    ref_image = np.repeat(np.arange(n, dtype=np.int64), refs_per_image)  # (R,)
    ref_first = n + np.cumsum(refs_per_image) - refs_per_image  # (N,) sentence of each image's first reference
    layout = _Layout(n, int(refs_per_image.max(initial=0)) + 1, ref_first)
    rank = np.arange(len(ref_image), dtype=np.int64) + n - ref_first[ref_image] + 1  # (R,) 1.. within the image
    slot = np.concatenate((np.arange(n, dtype=np.int64) * layout.per, ref_image * layout.per + rank))  # (S,)
    lengths = tokens.lengths
    sent_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (T,)
    remaining = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(sent_of))  # (T,) tokens left, this one too
    flat, vocab = tokens.ids, max(len(tokens.words), 1)
    gram_at = flat  # (T,) id of the k-gram that starts at each position (where remaining >= k)
    orders = []
    for k in range(1, max_n + 1):
        pos = np.flatnonzero(remaining >= k)  # (P,)
        keys = gram_at[pos] if k == 1 else gram_at[pos] * vocab + flat[pos + k - 1]
        order, gram_at = _order(keys, pos, slot[sent_of[pos]], layout, len(flat))
        orders.append(order)
    return NgramTable(lengths, ref_image, orders)


@dataclass(frozen=True)
class _Layout:
    """Sentence slots: image i's hypothesis is slot i * per, its j-th reference i * per + j + 1."""

    images: int
    per: int
    ref_first: np.ndarray  # (N,)

    @property
    def slots(self) -> int:
        return self.images * self.per


def _order(keys: np.ndarray, pos: np.ndarray, slot: np.ndarray, layout: _Layout,
           total: int) -> tuple[Order, np.ndarray]:
    """One order's entries from its positions' k-gram keys and sentence slots (P,), and the dense
    k-gram id of every position (T,) for the next order."""
    slots = max(layout.slots, 1)
    if (int(keys.max(initial=0)) + 1) * slots < 2**62:
        composite = keys * slots + slot
        sort = np.argsort(composite)  # one sort: by k-gram, then image, hypothesis first
        ranked = composite[sort]
        gram_key, entry_slot = ranked // slots, ranked % slots
    else:  # keys too large to combine in 64 bits: a two-key sort
        sort = np.lexsort((slot, keys))
        gram_key, entry_slot = keys[sort], slot[sort]
    new_gram = _changes(gram_key)
    dense = np.cumsum(new_gram) - 1  # (P,) k-gram id, in sorted order
    gram_at = np.zeros(total, dtype=np.int64)
    gram_at[pos[sort]] = dense
    first = np.flatnonzero(new_gram | _changes(entry_slot))  # (E,) first position of each entry
    image, rank = entry_slot[first] // layout.per, entry_slot[first] % layout.per
    is_hyp = rank == 0
    new_group = new_gram[first] | _changes(image)
    return Order(
        gram=dense[first],
        image=image,
        sent=np.where(is_hyp, image, layout.ref_first[image] + rank - 1),
        is_hyp=is_hyp,
        count=np.diff(np.append(first, len(sort))),
        group=np.cumsum(new_group) - 1,
        starts=np.flatnonzero(new_group),
        size=int(dense[-1]) + 1 if len(dense) else 0,
    ), gram_at


def _changes(values: np.ndarray) -> np.ndarray:
    """True where a value differs from the one before it (and at the start)."""
    out = np.empty(len(values), dtype=bool)
    out[:1] = True
    np.not_equal(values[1:], values[:-1], out=out[1:])
    return out
