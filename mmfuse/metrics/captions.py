"""All caption metrics of one evaluation in one call: corpus and per-image scores, and what each took."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from mmfuse.metrics.bleu import bleu_of_table
from mmfuse.metrics.cider import cider_d_of_table
from mmfuse.metrics.ngrams import Tokens, build_table
from mmfuse.metrics.ptb import TokenIds, coco_tokenize_all, intern
from mmfuse.metrics.rouge import rouge_l_of_ids

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")
Timings = dict[str, float]  # step -> seconds
T = TypeVar("T")


def caption_scores(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]],
                   timings: Timings | None = None) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D (coco-caption definitions) of tokenized captions.

    Returns:
        ``{"corpus": {metric: score}, "per_image": [{metric: score}, ...]}`` in input order.
    """
    _check_inputs(hypotheses, references)
    tokens = intern([*hypotheses, *(r for refs in references for r in refs)])
    return scores_of_ids(tokens, reference_counts(references), timings)


def score_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                timings: Timings | None = None) -> dict[str, Any]:
    """:func:`caption_scores` of raw caption text, tokenized as coco-caption does (PTB, lower case,
    punctuation removed)."""
    tokens = tokenize_texts(hypotheses, references, timings)
    return scores_of_ids(tokens, reference_counts(references), timings)


def tokenize_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   timings: Timings | None = None) -> TokenIds:
    """The hypotheses, then every image's references, tokenized as coco-caption does."""
    _check_inputs(hypotheses, references)
    return timed(timings, "tokenize", lambda: coco_tokenize_all([*hypotheses, *(r for refs in references for r in refs)]))


def scores_of_ids(tokens: TokenIds, refs_per_image: np.ndarray, timings: Timings | None = None) -> dict[str, Any]:
    """Every metric of N hypotheses followed by their references (``refs_per_image[i]`` for image i)."""
    table = timed(timings, "ngrams", lambda: build_table(tokens, refs_per_image))  # shared n-gram ids
    b_corpus, b_images = timed(timings, "bleu", lambda: bleu_of_table(table))
    r_corpus, r_images = timed(timings, "rouge_l", lambda: rouge_l_of_ids(tokens, refs_per_image))
    c_corpus, c_images = timed(timings, "cider_d", lambda: cider_d_of_table(table))
    corpus = dict(zip(METRICS, [*b_corpus, r_corpus, c_corpus]))
    per_image = [dict(zip(METRICS, [*b, r, c])) for b, r, c in zip(b_images, r_images, c_images)]
    return {"corpus": corpus, "per_image": per_image}


def timed(timings: Timings | None, step: str, work: Callable[[], T]) -> T:
    """``work()``, its wall time added to ``timings[step]`` when timings are kept."""
    start = time.perf_counter()
    result = work()
    if timings is not None:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
    return result


def reference_counts(references: Sequence[Sequence[Any]]) -> np.ndarray:
    """How many references each image has -> (N,)."""
    return np.fromiter(map(len, references), dtype=np.int64, count=len(references))


def _check_inputs(hypotheses: Sequence[Any], references: Sequence[Sequence[Any]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference")
