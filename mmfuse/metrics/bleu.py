"""BLEU-1..4 exactly as coco-caption computes them (``pycocoevalcap/bleu/bleu_scorer.py``).

Corpus BLEU sums clipped n-gram matches, n-gram counts and lengths over all images, then takes the
geometric mean of the precisions and a brevity penalty with the 'closest' reference length (ties to
the shorter reference). Per-image BLEU applies the same formula to one image. coco-caption's
smoothing constants (1e-15 added to matches, 1e-9 to counts) are kept so results agree to float
precision, including images with no match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from mmfuse.metrics.ngrams import MAX_N, Tokens, ngram_counts

TINY, SMALL = 1e-15, 1e-9


@dataclass
class BleuStats:
    """Sufficient statistics of one image (or a sum of images)."""

    testlen: int = 0
    reflen: int = 0
    guess: list[int] = field(default_factory=lambda: [0] * MAX_N)
    correct: list[int] = field(default_factory=lambda: [0] * MAX_N)

    def add(self, other: "BleuStats") -> None:
        self.testlen += other.testlen
        self.reflen += other.reflen
        self.guess = [a + b for a, b in zip(self.guess, other.guess)]
        self.correct = [a + b for a, b in zip(self.correct, other.correct)]

    def scores(self) -> list[float]:
        """BLEU-1..4 from these statistics."""
        out, product = [], 1.0
        for k in range(MAX_N):
            product *= (self.correct[k] + TINY) / (self.guess[k] + SMALL)
            out.append(product ** (1.0 / (k + 1)))
        ratio = (self.testlen + TINY) / (self.reflen + SMALL)
        if ratio < 1:
            out = [s * math.exp(1 - 1 / ratio) for s in out]
        return out


def image_stats(hypothesis: Tokens, references: Sequence[Tokens]) -> BleuStats:
    """Clipped matches and lengths of one hypothesis against its references."""
    max_ref: dict[tuple[str, ...], int] = {}
    for ref in references:
        for gram, count in ngram_counts(ref).items():
            if count > max_ref.get(gram, 0):
                max_ref[gram] = count
    testlen = len(hypothesis)
    reflen = min((abs(len(r) - testlen), len(r)) for r in references)[1]
    correct = [0] * MAX_N
    for gram, count in ngram_counts(hypothesis).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
    guess = [max(0, testlen - k) for k in range(MAX_N)]
    return BleuStats(testlen, reflen, guess, correct)


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..4 and per-image BLEU-1..4.

    Args:
        hypotheses: one tokenized caption per image.
        references: per image, a non-empty list of tokenized references.

    Returns:
        ``(corpus, per_image)``: corpus is ``[b1, b2, b3, b4]``; per_image[i] likewise for image i.
    """
    total = BleuStats()
    per_image = []
    for hyp, refs in zip(hypotheses, references):
        stats = image_stats(hyp, refs)
        total.add(stats)
        per_image.append(stats.scores())
    return total.scores(), per_image


def _check(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference")
