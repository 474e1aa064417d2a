"""CIDEr-D as coco-caption computes it (``pycocoevalcap/cider/cider_scorer.py``).

n = 1..4. Each caption becomes one TF-IDF vector per n-gram order: term frequency times
``log(#images) - log(max(1, df))``, where ``df`` counts the evaluated images whose references contain
the n-gram. Per reference: cosine similarity with the hypothesis, the hypothesis weights clipped to
the reference's (the "-D" in CIDEr-D), times a Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``
with sigma = 6. The image score is the mean over orders and references, times 10; the corpus score
is the mean over images. As in coco-caption, ``delta`` compares bigram counts (length - 1).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from mmfuse.metrics.ngrams import MAX_N, Tokens, ngram_counts

SIGMA = 6.0


class _Vector:
    """Per-order TF-IDF weights of one caption, their norms, and its bigram count."""

    __slots__ = ("weights", "norms", "length")

    def __init__(self, counts: Counter, df: dict, log_images: float):
        self.weights: list[dict] = [{} for _ in range(MAX_N)]
        squares = [0.0] * MAX_N
        self.length = 0
        for gram, tf in counts.items():
            n = len(gram) - 1
            w = float(tf) * (log_images - math.log(max(1.0, df.get(gram, 0.0))))
            self.weights[n][gram] = w
            squares[n] += w * w
            if n == 1:
                self.length += tf
        self.norms = [math.sqrt(s) for s in squares]


def _similarity(hyp: _Vector, ref: _Vector) -> float:
    """Sum over orders of the clipped, length-penalised cosine similarity."""
    penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * SIGMA**2))
    total = 0.0
    for n in range(MAX_N):
        ref_w = ref.weights[n]
        dot = 0.0
        for gram, w in hyp.weights[n].items():
            r = ref_w.get(gram, 0.0)
            dot += min(w, r) * r
        if hyp.norms[n] != 0 and ref.norms[n] != 0:
            dot /= hyp.norms[n] * ref.norms[n]
        total += dot * penalty
    return total


def document_frequency(references: Sequence[Sequence[Tokens]]) -> tuple[dict, list[list[Counter]]]:
    """How many images' references contain each n-gram, and every reference's n-gram counts."""
    df: Counter = Counter()
    ref_counts = []
    for refs in references:
        counts = [ngram_counts(r) for r in refs]
        ref_counts.append(counts)
        df.update({gram for c in counts for gram in c})
    return df, ref_counts


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean over images) and per-image CIDEr-D; IDF from these references."""
    df, ref_counts = document_frequency(references)
    log_images = math.log(float(len(references)))
    per_image = []
    for hyp, counts in zip(hypotheses, ref_counts):
        vec = _Vector(ngram_counts(hyp), df, log_images)
        sims = sum(_similarity(vec, _Vector(c, df, log_images)) for c in counts)
        per_image.append(sims / MAX_N / len(counts) * 10.0)
    return sum(per_image) / len(per_image), per_image
