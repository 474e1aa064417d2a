"""ROUGE-L as coco-caption computes it (``pycocoevalcap/rouge/rouge.py``).

Per image: the longest common subsequence (LCS) with each reference gives a precision and a recall;
the best precision and the best recall over the references (taken separately) are combined into an
F-measure with beta = 1.2. The corpus score is the mean over images. The LCS uses the bit-parallel
algorithm of Allison and Dix (one big-integer operation per reference token), so long captions
cost little.
"""

from __future__ import annotations

from typing import Sequence

from mmfuse.metrics.ngrams import Tokens

BETA = 1.2


def lcs_length(a: Tokens, b: Tokens) -> int:
    """Length of the longest common subsequence of token lists ``a`` and ``b``."""
    return _lcs(_masks(a), len(a), b)


def _masks(a: Tokens) -> dict[str, int]:
    """For each token of ``a``, the bit set of the positions where it occurs."""
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[str, int], length: int, b: Tokens) -> int:
    """LCS length of ``b`` with the sequence that ``masks`` (of ``length`` tokens) describes."""
    if not length or not b:
        return 0
    row, limit = 0, (1 << length) - 1
    for tok in b:
        x = masks.get(tok, 0) | row
        row = x & ~(x - ((row << 1) | 1)) & limit
    return bin(row).count("1")


def _as_coco(tokens: Tokens) -> Tokens:
    """coco-caption splits on single spaces, so an empty caption is one empty token."""
    return tokens if len(tokens) else [""]


def rouge_l_image(hypothesis: Tokens, references: Sequence[Tokens]) -> float:
    """ROUGE-L F-measure (beta 1.2) of one hypothesis against its references."""
    hyp = _as_coco(hypothesis)
    masks = _masks(hyp)  # built once, reused for every reference
    best_p = best_r = 0.0
    for ref in references:
        ref = _as_coco(ref)
        common = _lcs(masks, len(hyp), ref)
        best_p = max(best_p, common / len(hyp))
        best_r = max(best_r, common / len(ref))
    if best_p == 0 or best_r == 0:
        return 0.0
    return (1 + BETA**2) * best_p * best_r / (best_r + BETA**2 * best_p)


def rouge_l(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float, list[float]]:
    """Corpus ROUGE-L (mean over images) and per-image ROUGE-L."""
    per_image = [rouge_l_image(h, r) for h, r in zip(hypotheses, references)]
    return sum(per_image) / len(per_image), per_image
