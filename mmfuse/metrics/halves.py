"""Scoring a large caption set in two processes: starting the second one and handing it its images.
Imports neither numpy nor the metrics, so that the second process can be started first.

The second process (:mod:`mmfuse.beside`) tokenizes the images from a cut on and scores their ROUGE-L,
swaps tokens with this process, then builds the bigram and 4-gram statistics of every image
(:func:`mmfuse.metrics.captions.second_half`). Started before the captions are known (scoring files
starts it before reading them), it imports numpy and the metrics while this process reads the files,
and then takes more of the images than this process: this process still has to import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

from mmfuse.beside import Pending, beside
from mmfuse.metrics.timings import Timings

if TYPE_CHECKING:
    from mmfuse.metrics.ptb import TokenIds

# images: scoring 500 took 29 ms in one process and 32 in two, 1,000 took 74 and 56, 4,000 257 and 213
TWO_PROCESSES_FROM = 1000
EVEN = 0.5  # this process's share of the images where both start together
# ... where the second process imported the metrics while this one read the files (8,092 images: its
# imports 45-75 ms beside this process's 30-38 ms of reading, 5-6 ms of handing over and 40 ms of imports).
# Whole commands, medians of 30 alternating pairs: against forking after the files are read, 0.46 -25 ms,
# 0.42 -36 ms, 0.39 -37 ms; against 0.42, 0.38 -6 ms, 0.46 +0, 0.34 +4, 0.50 +20 (the machine's noise:
# about 10 ms)
STARTED_EARLY = 0.42


@dataclass(frozen=True)
class SecondHalf:
    """A second process at work on the images from ``cut`` on (what
    :func:`mmfuse.metrics.captions.scored_texts` takes)."""

    process: Pending[Any, Any, Any]
    cut: int


def start() -> Pending[Any, Any, Any]:
    """A second process for captions that are not known yet: it imports the metrics, then waits for its
    images (:func:`hand_over`). Stopped when its block is left, whether or not it got any."""
    return beside(_second_half)


def _second_half() -> Generator[Any, Any, Any]:
    """The second process's work: ready once it has imported the metrics, then its images' part."""
    from mmfuse.metrics.captions import second_half  # numpy and the metrics, meanwhile

    hypotheses, references, refs_per_image, cut = yield None  # given
    return (yield from second_half(hypotheses, references, refs_per_image, cut))


def hand_over(process: Pending[Any, Any, Any], hypotheses: Sequence[str], references: Sequence[Sequence[str]],
              share: float) -> SecondHalf | None:
    """Give the second ``process`` the images after this process's ``share`` of them (and every image's
    reference count: it builds its statistics over all images); None, and the process stopped, where
    the set is too small to be worth splitting."""
    if len(hypotheses) < TWO_PROCESSES_FROM:
        process.cancel()
        return None
    cut = round(len(hypotheses) * share)
    process.give((hypotheses[cut:], references[cut:], list(map(len, references)), cut))
    return SecondHalf(process, cut)


def scored_in_two(hypotheses: Sequence[str], references: Sequence[Sequence[str]], timings: Timings | None = None,
                  *, meanwhile: Callable[[], object] | None = None) -> tuple[dict[str, Any], TokenIds]:
    """:func:`mmfuse.metrics.captions.scored_texts`, a large set split evenly with a second process
    started now (the captions are known already, so neither process starts ahead); a small one in this
    process alone."""
    from mmfuse.metrics.captions import scored_texts

    if len(hypotheses) < TWO_PROCESSES_FROM:  # no process started for nothing
        return scored_texts(hypotheses, references, timings, meanwhile=meanwhile)
    with start() as process:
        second = hand_over(process, hypotheses, references, EVEN)
        return scored_texts(hypotheses, references, timings, meanwhile=meanwhile, second=second)
