"""All caption metrics of one evaluation in one call: corpus and per-image scores, and what each took.

In two processes (scoring files: ``mmfuse evaluate --predictions``; :mod:`mmfuse.metrics.halves`), a
large set is scored by this process and a child (:mod:`mmfuse.beside`): the child tokenizes the images
from a cut on and scores their ROUGE-L while this process does the ones before; the two processes swap
their tokens, and the child builds the bigram and 4-gram statistics (4-grams are keyed by bigram ids)
while this process builds the unigram and trigram ones, which need no other order, and then the report.
Every score is the same either way. The time of each step is this process's own;
``merge`` is the waits for the other process, the swap and the joining.

Shape legend: N images, R references in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Generator, Protocol, Sequence

import numpy as np

from mmfuse.beside import Pending
from mmfuse.metrics.bleu import bleu_of_matches, clipped_matches
from mmfuse.metrics.cider import cider_d_of_cosines, cosines
from mmfuse.metrics.ngrams import ORDERS, Tokens, ngram_orders
from mmfuse.metrics.ptb import TokenIds, coco_tokenize_all, intern
from mmfuse.metrics.rouge import rouge_l_scores
from mmfuse.metrics.timings import Timings, timed

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider_d")
# the n-gram orders each process builds: the child's take longer (a sort with its permutation, to number
# the bigrams) and this process has the report to write after them
MINE, THEIRS = (1, 3), (2, 4)
Half = tuple[TokenIds, np.ndarray]  # some images' tokens (their hypotheses, then their references), their ROUGE-L (N,)


class SecondHalf(Protocol):
    """A second process at work on the images from ``cut`` on (:func:`mmfuse.metrics.halves.hand_over`)."""

    @property
    def process(self) -> Pending[Any, Any, Any]: ...

    @property
    def cut(self) -> int: ...


@dataclass(frozen=True, eq=False)  # arrays: no field-wise ==
class OrderScores:
    """What BLEU and CIDEr-D take from one n-gram order."""

    matches: np.ndarray  # (N,) clipped hypothesis n-gram matches of each image
    cosine: np.ndarray  # (R,) clipped TF-IDF cosine of each reference with its image's hypothesis


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
    return scored_texts(hypotheses, references, timings)[0]


def scored_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]], timings: Timings | None = None,
                 *, meanwhile: Callable[[], object] | None = None,
                 second: SecondHalf | None = None) -> tuple[dict[str, Any], TokenIds]:
    """:func:`score_texts`, and the tokens (the hypotheses, then every image's references).

    ``second``: a second process already given the images from its cut on
    (:func:`mmfuse.metrics.halves.hand_over`), which scores them with this one. ``meanwhile``: the
    caller's own work (getting ready to print the report), called once: in two processes, when this one
    has done its part and the other may still be at its own; else at the end.
    """
    _check_inputs(hypotheses, references)
    counts = reference_counts(references)
    if second is not None:
        return _in_two(hypotheses, references, counts, second, timings, meanwhile)
    tokens = tokenize_texts(hypotheses, references, timings)
    scores = scores_of_ids(tokens, counts, timings)
    if meanwhile is not None:
        meanwhile()
    return scores, tokens


def _in_two(hypotheses: Sequence[str], references: Sequence[Sequence[str]], counts: np.ndarray,
            second: SecondHalf, timings: Timings | None,
            meanwhile: Callable[[], object] | None) -> tuple[dict[str, Any], TokenIds]:
    """This process's part of :func:`scored_texts` in two processes: the images before the cut, the
    unigram and trigram statistics, the report."""
    cut, other = second.cut, second.process
    mine = _tokens_and_rouge(hypotheses[:cut], references[:cut], counts[:cut], timings)
    theirs = timed(timings, "merge", lambda: other.exchange(_compact(mine)))
    tokens, rouge = timed(timings, "merge", lambda: _join(mine, theirs))
    orders = order_scores(tokens, counts, MINE, timings)
    if meanwhile is not None:
        meanwhile()
    orders |= timed(timings, "merge", other.result)
    return _scores(tokens, counts, orders, rouge, timings), tokens


def second_half(hypotheses: Sequence[str], references: Sequence[Sequence[str]], refs_per_image: Sequence[int],
                cut: int) -> Generator[Half, Half, dict[int, OrderScores]]:
    """The second process's part: the tokens and ROUGE-L of the images from ``cut`` on (``hypotheses``
    and ``references`` are theirs, ``refs_per_image`` every image's), sent over for the first images';
    then, on every image, the bigram and 4-gram statistics."""
    counts = np.asarray(refs_per_image, dtype=np.int64)  # (N,)
    mine = _tokens_and_rouge(hypotheses, references, counts[cut:], None)
    first = yield _compact(mine)
    tokens, _ = _join(first, mine)
    return order_scores(tokens, counts, THEIRS)


def tokenize_texts(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                   timings: Timings | None = None) -> TokenIds:
    """The hypotheses, then every image's references, tokenized as coco-caption does."""
    _check_inputs(hypotheses, references)
    return timed(timings, "tokenize", lambda: coco_tokenize_all([*hypotheses, *chain.from_iterable(references)]))


def scores_of_ids(tokens: TokenIds, refs_per_image: np.ndarray, timings: Timings | None = None) -> dict[str, Any]:
    """Every metric of N hypotheses followed by their references (``refs_per_image[i]`` for image i)."""
    orders = order_scores(tokens, refs_per_image, ORDERS, timings)
    rouge = timed(timings, "rouge_l", lambda: rouge_l_scores(tokens, refs_per_image))
    return _scores(tokens, refs_per_image, orders, rouge, timings)


def _scores(tokens: TokenIds, refs_per_image: np.ndarray, orders: dict[int, OrderScores], rouge: np.ndarray,
            timings: Timings | None) -> dict[str, Any]:
    """Corpus and per-image scores from every order's statistics and the per-image ROUGE-L (N,)."""
    ref_image = np.repeat(np.arange(len(refs_per_image)), refs_per_image)  # (R,)
    matches = np.stack([orders[k].matches for k in ORDERS], 1)  # (N, K)
    b_corpus, b_images = timed(timings, "bleu", lambda: bleu_of_matches(matches, tokens.lengths, ref_image))
    cosine = sum(orders[k].cosine for k in ORDERS)  # (R,) in order, as one process adds them
    c_corpus, c_images = timed(timings, "cider_d", lambda: cider_d_of_cosines(cosine, tokens.lengths, ref_image))
    corpus = dict(zip(METRICS, [*b_corpus, float(rouge.mean()), c_corpus]))
    # each image's METRICS written out: a third of the time of dict(zip(METRICS, ...)), 1.7 ms against 4.9
    per_image = [{"bleu1": b1, "bleu2": b2, "bleu3": b3, "bleu4": b4, "rouge_l": r, "cider_d": c}
                 for (b1, b2, b3, b4), r, c in zip(b_images, rouge.tolist(), c_images)]
    return {"corpus": corpus, "per_image": per_image}


def order_scores(tokens: TokenIds, refs_per_image: np.ndarray, orders: Sequence[int],
                 timings: Timings | None = None) -> dict[int, OrderScores]:
    """BLEU's and CIDEr-D's statistics of the n-gram ``orders`` asked for, one order at a time: each
    order's arrays are dropped before the next is built, which then reuses their memory (memory new to
    a process costs a page fault per 4 KiB page, about 0.5 ms per MB on the 2-core machine; peak
    memory of the whole command on 8,092 images: 166 MB keeping every order, 141 MB this way)."""
    n = len(refs_per_image)
    ref_image = np.repeat(np.arange(n, dtype=np.int64), refs_per_image)  # (R,)
    built = ngram_orders(tokens, refs_per_image, orders)
    scores: dict[int, OrderScores] = {}
    for _ in orders:
        k, order = timed(timings, "ngrams", lambda: next(built))
        matches = timed(timings, "bleu", lambda: clipped_matches(order, n))
        scores[k] = OrderScores(matches, timed(timings, "cider_d", lambda: cosines(order, n, ref_image)))
        order = None  # (the next order reuses its memory)
    return scores


def _tokens_and_rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]], refs_per_image: np.ndarray,
                      timings: Timings | None) -> Half:
    """The tokens of some images' captions and their per-image ROUGE-L (N,)."""
    tokens = tokenize_texts(hypotheses, references, timings)
    return tokens, timed(timings, "rouge_l", lambda: rouge_l_scores(tokens, refs_per_image))


def _compact(half: Half) -> Half:
    """A half as it travels to the other process: token ids and counts as int32 (half the bytes to
    pickle, pipe and unpickle; 4-6 ms less over the swap on 8,092 images). Vocabularies stay far below
    2**31 words, and a sentence below 2**31 tokens."""
    tokens, rouge = half
    return TokenIds(tokens.ids.astype(np.int32), tokens.lengths.astype(np.int32), tokens.words), rouge


def _join(first: Half, second: Half) -> Half:
    """Two halves' tokens (each its hypotheses, then its references) and per-image ROUGE-L as one set:
    every hypothesis, then every reference, in image order, the second half's words numbered on after
    the first's; ROUGE-L (N,)."""
    (a, rouge_a), (b, rouge_b) = first, second
    na, nb = len(rouge_a), len(rouge_b)  # images in each half
    vocab = {word: i for i, word in enumerate(a.words)}
    renumber = np.array([vocab.setdefault(word, len(vocab)) for word in b.words], dtype=np.int64)
    b_ids = renumber[b.ids] if len(b.ids) else b.ids
    a_hyp, b_hyp = int(a.lengths[:na].sum()), int(b.lengths[:nb].sum())  # hypothesis tokens in each half
    ids = np.concatenate((a.ids[:a_hyp], b_ids[:b_hyp], a.ids[a_hyp:], b_ids[b_hyp:])).astype(np.int64, copy=False)
    lengths = np.concatenate((a.lengths[:na], b.lengths[:nb], a.lengths[na:], b.lengths[nb:])).astype(np.int64, copy=False)
    return TokenIds(ids, lengths, list(vocab)), np.concatenate((rouge_a, rouge_b))


def reference_counts(references: Sequence[Sequence[Any]]) -> np.ndarray:
    """How many references each image has -> (N,)."""
    return np.fromiter(map(len, references), dtype=np.int64, count=len(references))


def _check_inputs(hypotheses: Sequence[Any], references: Sequence[Sequence[Any]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if not all(references):  # an empty list
        raise ValueError("every image needs at least one reference")
