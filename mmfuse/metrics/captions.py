"""All caption metrics of one evaluation in one call: corpus and per-image scores."""

from __future__ import annotations

from typing import Any, Sequence

from mmfuse.metrics.bleu import _check, bleu
from mmfuse.metrics.cider import cider_d
from mmfuse.metrics.ngrams import Tokens
from mmfuse.metrics.rouge import rouge_l

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")


def caption_scores(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D (coco-caption definitions) of tokenized captions.

    Returns:
        ``{"corpus": {metric: score}, "per_image": [{metric: score}, ...]}`` in input order.
    """
    _check(hypotheses, references)
    b_corpus, b_images = bleu(hypotheses, references)
    r_corpus, r_images = rouge_l(hypotheses, references)
    c_corpus, c_images = cider_d(hypotheses, references)
    corpus = dict(zip(METRICS, [*b_corpus, r_corpus, c_corpus]))
    per_image = [dict(zip(METRICS, [*b, r, c])) for b, r, c in zip(b_images, r_images, c_images)]
    return {"corpus": corpus, "per_image": per_image}
