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

from mmfuse.metrics.ngrams import MAX_N, ORDERS, NgramTable, Order, Tokens, build_table
from mmfuse.metrics.ptb import intern

SIGMA = 6.0


def cider_d(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float, list[float]]:
    """Corpus CIDEr-D (mean over images) and per-image CIDEr-D of tokenized captions; IDF from these
    references."""
    counts = np.array([len(r) for r in references], dtype=np.int64)
    return cider_d_of_table(build_table(intern([*hypotheses, *(r for refs in references for r in refs)]), counts))


def cider_d_of_table(table: NgramTable) -> tuple[float, list[float]]:
    """:func:`cider_d` of the captions an n-gram table holds."""
    n, ref_image = table.images, table.ref_image
    return cider_d_of_cosines(sum(cosines(table.orders[k], n, ref_image) for k in ORDERS), table.lengths, ref_image)


def cider_d_of_cosines(cosine: np.ndarray, lengths: np.ndarray, ref_image: np.ndarray) -> tuple[float, list[float]]:
    """Corpus and per-image CIDEr-D from each reference's clipped cosines summed over the orders (R,)
    and the token counts of the N hypotheses and then the references (N + R,)."""
    n = len(lengths) - len(ref_image)
    refs_per_image = np.bincount(ref_image, minlength=n)
    bigrams = np.maximum(lengths - 1, 0)
    penalty = np.exp(-((bigrams[:n][ref_image] - bigrams[n:]) ** 2) / (2 * SIGMA**2))  # (R,)
    similarity = cosine * penalty  # (R,)
    per_image = np.bincount(ref_image, weights=similarity, minlength=n) / MAX_N / refs_per_image * 10.0
    return float(per_image.mean()), per_image.tolist()


def cosines(order: Order, n: int, ref_image: np.ndarray) -> np.ndarray:
    """Clipped cosine similarity of each reference with its image's hypothesis, one order -> (R,)."""
    sentences = n + len(ref_image)
    weights = order.count * _idf(order, n)[order.gram]  # (E,)
    norms = np.sqrt(np.bincount(order.sent, weights=weights**2, minlength=sentences))  # (S,)
    entries, which = order.beside_hyp  # (M,) the reference entries that share an n-gram with the hypothesis
    ref_weight = weights[entries]
    products = np.minimum(weights[order.hyp_entries][which], ref_weight) * ref_weight  # (M,)
    dot = np.bincount(order.sent[entries], weights=products, minlength=sentences)[n:].astype(float)  # (R,) (int when M is 0)
    denom = norms[:n][ref_image] * norms[n:]
    return np.divide(dot, denom, out=dot.copy(), where=denom != 0)


def _idf(order: Order, n: int) -> np.ndarray:
    """log(#images) - log(max(1, number of images whose references hold the n-gram)) -> (G,)."""
    has_ref = order.sizes > order.is_hyp[order.starts]  # (Q,) a group holds a reference unless it is a lone hypothesis
    df = np.bincount(order.gram[order.starts[has_ref]], minlength=order.size)
    return np.log(float(n)) - np.log(np.maximum(df, 1.0))
