"""BLEU-1..4 exactly as coco-caption computes them (``pycocoevalcap/bleu/bleu_scorer.py``).

Per image: clipped n-gram matches (each hypothesis n-gram counts at most as often as in the
reference where it is most frequent), n-gram counts, and the 'closest' reference length (ties to
the shorter). Corpus BLEU sums these over images before the geometric mean of the precisions and
the brevity penalty ``exp(1 - r/c)`` when c < r. coco-caption's smoothing constants (1e-15 added to
matches, 1e-9 to counts) are kept so results agree to float precision.

Shape legend: N images, R references in all, K = 4 orders.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmfuse.metrics.ngrams import MAX_N, ORDERS, NgramTable, Order, Tokens, build_table
from mmfuse.metrics.ptb import intern

TINY, SMALL = 1e-15, 1e-9


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..4 and per-image BLEU-1..4 of tokenized captions.

    Args:
        hypotheses: one tokenized caption per image (N).
        references: per image, a non-empty list of tokenized references.

    Returns:
        ``(corpus, per_image)``: corpus is ``[b1, b2, b3, b4]``; per_image[i] likewise for image i.
    """
    counts = np.array([len(r) for r in references], dtype=np.int64)
    return bleu_of_table(build_table(intern([*hypotheses, *(r for refs in references for r in refs)]), counts))


def bleu_of_table(table: NgramTable) -> tuple[list[float], list[list[float]]]:
    """:func:`bleu` of the captions an n-gram table holds."""
    n = table.images
    correct = np.stack([clipped_matches(table.orders[k], n) for k in ORDERS], 1)  # (N, K)
    return bleu_of_matches(correct, table.lengths, table.ref_image)


def bleu_of_matches(correct: np.ndarray, lengths: np.ndarray, ref_image: np.ndarray) -> tuple[list[float], list[list[float]]]:
    """Corpus and per-image BLEU-1..4 from each image's clipped matches of every order (N, K) and the
    token counts of the N hypotheses and then the references (N + R,)."""
    n = len(correct)
    hyp_len, ref_len = lengths[:n], lengths[n:]
    guess = np.maximum(hyp_len[:, None] - np.arange(MAX_N)[None, :], 0)  # (N, K)
    closest = _closest_lengths(hyp_len, ref_len, ref_image, n)  # (N,)
    per_image = _scores(correct, guess, hyp_len, closest)
    corpus = _scores(correct.sum(0, keepdims=True), guess.sum(0, keepdims=True),
                     hyp_len.sum(keepdims=True), closest.sum(keepdims=True))[0]
    return corpus.tolist(), per_image.tolist()


def clipped_matches(order: Order, n: int) -> np.ndarray:
    """Per image, sum over hypothesis n-grams of min(count, max count in one reference) -> (N,)."""
    if not len(order.count):
        return np.zeros(n)
    entries, which = order.beside_hyp  # (M,) the reference entries that share an n-gram with the hypothesis
    hyp = order.hyp_entries
    most = np.zeros(len(hyp), dtype=order.count.dtype)  # (H,) the most one reference of the image holds
    shared = np.flatnonzero(np.diff(which, prepend=-1))  # (H',) first of each hypothesis entry's run
    if len(shared):
        most[which[shared]] = np.maximum.reduceat(order.count[entries], shared)
    clipped = np.minimum(order.count[hyp], most)
    return np.bincount(order.image[hyp], weights=clipped, minlength=n)


def _closest_lengths(hyp_len: np.ndarray, ref_len: np.ndarray, ref_image: np.ndarray, n: int) -> np.ndarray:
    """The reference length closest to the hypothesis length, the shorter on ties -> (N,)."""
    big = int(max(ref_len.max(initial=0), hyp_len.max(initial=0))) + 1
    code = np.abs(ref_len - hyp_len[ref_image]) * big + ref_len  # orders by (distance, length)
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(best, ref_image, code)
    return best % big


def _scores(correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray) -> np.ndarray:
    """BLEU-1..4 rows from statistics rows (M, K) -> (M, K)."""
    precision = (correct + TINY) / (guess + SMALL)
    cumulative = np.cumprod(precision, axis=1)
    scores = cumulative ** (1.0 / np.arange(1, MAX_N + 1))
    ratio = (testlen + TINY) / (reflen + SMALL)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, TINY)), 1.0)
    return scores * penalty[:, None]

