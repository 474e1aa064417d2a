"""CIDEr-D as coco-caption computes it (``pycocoevalcap/cider/cider_scorer.py``).

n = 1..4. Each caption becomes one TF-IDF vector per n-gram order: term frequency times
``log(#images) - log(max(1, df))``, where ``df`` counts the evaluated images whose references contain
the n-gram. Per reference: cosine similarity with the hypothesis, the hypothesis weights clipped to
the reference's (the "-D" in CIDEr-D), times a Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``
with sigma = 6. The image score is the mean over orders and references, times 10; the corpus score
is the mean over images. As in coco-caption, ``delta`` compares bigram counts (length - 1).

Shape legend: N images, R references in all, E entries (sentence, n-gram) of one order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmfuse.metrics.ngrams import (
    MAX_N,
    NgramTable,
    Order,
    Tokens,
    build_table,
    lookup,
    sorted_unique,
)

SIGMA = 6.0


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]],
            table: NgramTable | None = None) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean over images) and per-image CIDEr-D; IDF from these references.

    ``table``: n-grams of ``hypotheses + all references`` in that order (built if not given).
    """
    n = len(hypotheses)
    refs_per_image = np.array([len(r) for r in references])
    ref_image = np.repeat(np.arange(n), refs_per_image)  # (R,)
    table = table or build_table(list(hypotheses) + [r for refs in references for r in refs])
    bigrams = np.maximum(table.lengths - 1, 0)
    penalty = np.exp(-((bigrams[:n][ref_image] - bigrams[n:]) ** 2) / (2 * SIGMA**2))  # (R,)
    similarity = sum(_cosine(order, n, ref_image) for order in table.orders[:MAX_N]) * penalty  # (R,)
    per_image = np.bincount(ref_image, weights=similarity, minlength=n) / MAX_N / refs_per_image * 10.0
    return float(per_image.mean()), per_image.tolist()


def _cosine(order: Order, n: int, ref_image: np.ndarray) -> np.ndarray:
    """Clipped cosine similarity of each reference with its image's hypothesis, one order -> (R,)."""
    weights = order.count * _idf(order, n, ref_image)[order.gram]  # (E,)
    norms = np.sqrt(np.bincount(order.sent, weights=weights**2, minlength=n + len(ref_image)))
    is_ref = order.sent >= n
    hyp_keys = order.sent[~is_ref] * order.size + order.gram[~is_ref]  # one hypothesis per image: unique
    ref_sent = order.sent[is_ref]
    w_ref = weights[is_ref]
    w_hyp = lookup(hyp_keys, weights[~is_ref], ref_image[ref_sent - n] * order.size + order.gram[is_ref])
    dot = np.bincount(ref_sent - n, weights=np.minimum(w_hyp, w_ref) * w_ref, minlength=len(ref_image)).astype(float)
    denom = norms[:n][ref_image] * norms[n:]
    return np.divide(dot, denom, out=dot.copy(), where=denom != 0)


def _idf(order: Order, n: int, ref_image: np.ndarray) -> np.ndarray:
    """log(#images) - log(max(1, number of images whose references hold the n-gram)) -> (G,)."""
    is_ref = order.sent >= n
    pairs, _, _ = sorted_unique(ref_image[order.sent[is_ref] - n] * order.size + order.gram[is_ref])
    df = np.bincount(pairs % order.size, minlength=order.size)
    return np.log(float(n)) - np.log(np.maximum(df, 1.0))
