"""N-grams of a whole evaluation as integer arrays, shared by the caption metrics.

Every 1..4-gram of every caption (hypotheses and references together, so ids are shared) gets an
integer id; each order keeps the unique (sentence, n-gram) pairs with their counts. BLEU and
CIDEr-D then work on these arrays with numpy instead of Python dictionaries.

Shape legend: S sentences, E_k unique (sentence, k-gram) entries, G_k distinct k-grams.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Tokens = Sequence[str]
MAX_N = 4


@dataclass
class Order:
    """The k-grams of all sentences: entry e is gram ``gram[e]`` occurring ``count[e]`` times in
    sentence ``sent[e]``; ``size`` = G_k."""

    sent: np.ndarray  # (E_k,) int64
    gram: np.ndarray  # (E_k,) int64
    count: np.ndarray  # (E_k,) int64
    size: int


@dataclass
class NgramTable:
    lengths: np.ndarray  # (S,) tokens per sentence
    orders: list[Order]  # orders[k] holds the (k+1)-grams


def build_table(sentences: Sequence[Tokens], max_n: int = MAX_N) -> NgramTable:
    """Intern tokens, then build ids of k-grams from (k-1)-gram id and next token, order by order."""
    tokens = [t for s in sentences for t in s]
    vocab: dict[str, int] = {}
    # setdefault through map runs in C; ids are the first position of each token (< len(tokens))
    flat = np.fromiter(map(vocab.setdefault, tokens, itertools.count()), dtype=np.int64, count=len(tokens))
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    sent_of = np.repeat(np.arange(len(sentences), dtype=np.int64), lengths)  # (T,)
    starts = np.cumsum(lengths) - lengths
    remaining = lengths[sent_of] - (np.arange(len(flat), dtype=np.int64) - starts[sent_of])  # tokens left incl. this
    width = max(len(tokens), 1)
    gram_at = flat.copy()  # id of the k-gram starting at each position (-1 where none)
    orders = [_order(sent_of, flat, width)]
    for k in range(2, max_n + 1):
        pos = np.flatnonzero(remaining >= k)
        keys = gram_at[pos] * width + flat[pos + k - 1]
        uniq, inverse, _ = sorted_unique(keys)
        gram_at = np.full(len(flat), -1, dtype=np.int64)
        gram_at[pos] = inverse
        orders.append(_order(sent_of[pos], inverse.astype(np.int64), len(uniq)))
    return NgramTable(lengths, orders)


def _order(sent: np.ndarray, gram: np.ndarray, size: int) -> Order:
    """Unique (sentence, gram) pairs with counts."""
    size = max(int(size), 1)
    uniq, _, counts = sorted_unique(sent * size + gram)
    return Order(uniq // size, uniq % size, counts, size)


def sorted_unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct values of ``keys``, the index of each key's value, and the counts.

    A plain sort: faster here than ``np.unique``'s hash table on large integer keys.
    """
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.empty(len(ranked), dtype=bool)
    first[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    group = np.cumsum(first) - 1
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = group
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(ranked)))
    return ranked[first], inverse, counts


def lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``values`` at ``queries`` for sorted unique ``keys``; 0 where a query is absent."""
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=values.dtype)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, values[at], 0)
