"""CIDEr-D as a reward for self-critical training: the coco-caption formula (see
:mod:`mmfuse.metrics.cider`) on token ids, with the document frequencies counted once over the
training references (as self-critical.pytorch's ``cider-df``) and each image's reference vectors
precomputed, so a step only builds the vectors of the sampled captions.

``CiderDReward(references)(images, captions)`` scores caption j against the references of image
``images[j]``; with the references of the images being scored it equals :func:`mmfuse.metrics.cider.cider_d`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from mmfuse.metrics.cider import SIGMA
from mmfuse.metrics.ngrams import MAX_N

Ids = Sequence[int]
Vector = tuple[list[dict[tuple[int, ...], float]], list[float], int]  # per order: weights; per order: norm; bigrams


def ngrams(ids: Ids) -> Counter:
    """Counts of the 1..4-grams of ``ids``."""
    return Counter(tuple(ids[i:i + n]) for n in range(1, MAX_N + 1) for i in range(len(ids) - n + 1))


class CiderDReward:
    """CIDEr-D of captions against per-image references, IDF from ``references``.

    Args:
        references: per image, its reference captions as token ids (no ``<bos>``/``<eos>``/``<pad>``).
    """

    def __init__(self, references: Sequence[Sequence[Ids]]):
        counts = [[ngrams(r) for r in refs] for refs in references]
        self.df: Counter = Counter(g for image in counts for g in set().union(*image))  # images holding each n-gram
        self.log_images = math.log(float(len(references)))
        self.refs: list[list[Vector]] = [[self._vector(c) for c in image] for image in counts]

    def __call__(self, images: Sequence[int], captions: Sequence[Ids]) -> list[float]:
        """CIDEr-D of ``captions[j]`` against the references of image ``images[j]``."""
        return [self._score(self._vector(ngrams(c)), self.refs[i]) for i, c in zip(images, captions)]

    def _vector(self, counts: Counter) -> Vector:
        weights: list[dict[tuple[int, ...], float]] = [{} for _ in range(MAX_N)]
        bigrams = 0
        for gram, tf in counts.items():
            weights[len(gram) - 1][gram] = tf * (self.log_images - math.log(max(1.0, self.df.get(gram, 0.0))))
            if len(gram) == 2:
                bigrams += tf
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        return weights, norms, bigrams

    @staticmethod
    def _score(hyp: Vector, refs: list[Vector]) -> float:
        total = 0.0
        for ref in refs:
            penalty = math.exp(-((hyp[2] - ref[2]) ** 2) / (2 * SIGMA**2))
            for n in range(MAX_N):
                ref_weights = ref[0][n]
                dot = sum(min(w, ref_weights[g]) * ref_weights[g] for g, w in hyp[0][n].items() if g in ref_weights)
                if hyp[1][n] and ref[1][n]:
                    dot /= hyp[1][n] * ref[1][n]
                total += dot * penalty
        return total / MAX_N / max(len(refs), 1) * 10.0
