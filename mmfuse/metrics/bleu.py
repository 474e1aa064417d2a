"""Corpus BLEU-1..4 of generated captions against all their references (NLTK's implementation).

Corpus level, as papers report it: n-gram matches and lengths are summed over all images before the
geometric mean and the brevity penalty (closest reference length) are applied.
"""

from __future__ import annotations

import warnings
from typing import Sequence

Tokens = Sequence[str]


def corpus_bleu(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """BLEU-1..4 for tokenized hypotheses and, per hypothesis, a list of tokenized references.

    Returns:
        ``{"bleu1": .., "bleu2": .., "bleu3": .., "bleu4": ..}``, each in [0, 1].
    """
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns when some n-gram order has no match: score is 0
        scores = nltk_corpus_bleu([[list(r) for r in refs] for refs in references],
                                  [list(h) for h in hypotheses], weights=weights)
    return {f"bleu{n}": float(s) for n, s in enumerate(scores, 1)}
