"""All caption metrics of one evaluation in one call: corpus and per-image scores."""

from __future__ import annotations

from typing import Any, Sequence

from mmfuse.metrics.bleu import bleu
from mmfuse.metrics.cider import cider_d
from mmfuse.metrics.ngrams import Tokens, build_table
from mmfuse.metrics.ptb import coco_tokenize
from mmfuse.metrics.rouge import rouge_l

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")


def caption_scores(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D (coco-caption definitions) of tokenized captions.

    Returns:
        ``{"corpus": {metric: score}, "per_image": [{metric: score}, ...]}`` in input order.
    """
    _check_inputs(hypotheses, references)
    table = build_table(list(hypotheses) + [r for refs in references for r in refs])  # shared n-gram ids
    b_corpus, b_images = bleu(hypotheses, references, table)
    r_corpus, r_images = rouge_l(hypotheses, references)
    c_corpus, c_images = cider_d(hypotheses, references, table)
    corpus = dict(zip(METRICS, [*b_corpus, r_corpus, c_corpus]))
    per_image = [dict(zip(METRICS, [*b, r, c])) for b, r, c in zip(b_images, r_images, c_images)]
    return {"corpus": corpus, "per_image": per_image}


def score_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """:func:`caption_scores` of raw caption text, tokenized as coco-caption does (PTB, lower case,
    punctuation removed)."""
    return caption_scores(*tokenize_texts(hypotheses, references))


def tokenize_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list, list]:
    """Hypotheses and references tokenized as coco-caption does."""
    return [coco_tokenize(h) for h in hypotheses], [[coco_tokenize(r) for r in refs] for refs in references]


def _check_inputs(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference")
