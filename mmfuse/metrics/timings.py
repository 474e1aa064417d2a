"""What each step of an evaluation took (the reports' ``timings``). No numpy: scoring files times its
reading before it loads the metrics."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

Timings = dict[str, float]  # step -> seconds
T = TypeVar("T")


def timed(timings: Timings | None, step: str, work: Callable[[], T]) -> T:
    """``work()``, its wall time added to ``timings[step]`` when timings are kept."""
    start = time.perf_counter()
    result = work()
    if timings is not None:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
    return result
