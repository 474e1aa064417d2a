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

from mmfuse.metrics.ngrams import MAX_N, NgramTable, Tokens, build_table, lookup

TINY, SMALL = 1e-15, 1e-9


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]],
         table: NgramTable | None = None) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..4 and per-image BLEU-1..4.

    Args:
        hypotheses: one tokenized caption per image (N).
        references: per image, a non-empty list of tokenized references.
        table: n-grams of ``hypotheses + all references`` in that order (built if not given).

    Returns:
        ``(corpus, per_image)``: corpus is ``[b1, b2, b3, b4]``; per_image[i] likewise for image i.
    """
    n = len(hypotheses)
    ref_image = np.repeat(np.arange(n), [len(r) for r in references])  # (R,)
    table = table or build_table(list(hypotheses) + [r for refs in references for r in refs])
    hyp_len, ref_len = table.lengths[:n], table.lengths[n:]
    correct = np.stack([_clipped_matches(order, n, ref_image) for order in table.orders[:MAX_N]], 1)  # (N, K)
    guess = np.maximum(hyp_len[:, None] - np.arange(MAX_N)[None, :], 0)  # (N, K)
    closest = _closest_lengths(hyp_len, ref_len, ref_image, n)  # (N,)
    per_image = _scores(correct, guess, hyp_len, closest)
    corpus = _scores(correct.sum(0, keepdims=True), guess.sum(0, keepdims=True),
                     hyp_len.sum(keepdims=True), closest.sum(keepdims=True))[0]
    return corpus.tolist(), per_image.tolist()


def _clipped_matches(order, n: int, ref_image: np.ndarray) -> np.ndarray:
    """Per image, sum over hypothesis n-grams of min(count, max count in one reference) -> (N,)."""
    is_ref = order.sent >= n
    ref_keys = ref_image[order.sent[is_ref] - n] * order.size + order.gram[is_ref]
    ref_counts = order.count[is_ref]
    sort = np.lexsort((ref_counts, ref_keys))  # by key, then count: the last of each key is the max
    ref_keys, ref_counts = ref_keys[sort], ref_counts[sort]
    last = np.append(ref_keys[1:] != ref_keys[:-1], True) if len(ref_keys) else np.zeros(0, dtype=bool)
    hyp = ~is_ref
    hyp_keys = order.sent[hyp] * order.size + order.gram[hyp]
    max_ref = lookup(ref_keys[last], ref_counts[last], hyp_keys)
    return np.bincount(order.sent[hyp], weights=np.minimum(order.count[hyp], max_ref), minlength=n)


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

