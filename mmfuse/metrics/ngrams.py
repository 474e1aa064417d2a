"""N-gram counting shared by the caption metrics (tokens are already split)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

Tokens = Sequence[str]
MAX_N = 4


def ngram_counts(tokens: Tokens, n: int = MAX_N) -> Counter:
    """Counts of every 1..n-gram of ``tokens`` (n-grams as tuples)."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        counts.update(tuple(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
    return counts
