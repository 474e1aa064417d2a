"""METEOR 1.5 through the jar that pycocoevalcap ships (``pip install mmfuse[coco]`` and Java).

There is no Python re-implementation here on purpose: papers report the jar's numbers. When the jar
cannot run, :func:`meteor` raises :class:`MeteorUnavailable` with the reason, and reports say so.
"""

from __future__ import annotations

import shutil
from typing import Sequence

from mmfuse.metrics.ngrams import Tokens


class MeteorUnavailable(RuntimeError):
    """METEOR cannot be computed here; the message says why."""


def unavailable_reason() -> str | None:
    """Why METEOR cannot run here, or ``None`` when it can."""
    if shutil.which("java") is None:
        return "Java is not installed (METEOR 1.5 is a Java program)"
    try:
        import pycocoevalcap.meteor.meteor  # noqa: F401
    except ImportError:
        return "pycocoevalcap is not installed (pip install 'mmfuse[coco]')"
    return None


def meteor(hypotheses: Sequence[Tokens], references: Sequence[Sequence[Tokens]]) -> tuple[float, list[float]]:
    """Corpus and per-image METEOR 1.5 (``-l en -norm``, as coco-caption runs it)."""
    reason = unavailable_reason()
    if reason:
        raise MeteorUnavailable(reason)
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
        res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
        score, per_image = scorer.compute_score(gts, res)
    except (OSError, ValueError) as exc:
        raise MeteorUnavailable(f"the METEOR jar failed: {exc}") from None
    finally:
        _close(scorer)
    return float(score), [float(s) for s in per_image]


def _close(scorer) -> None:
    proc = getattr(scorer, "meteor_p", None)
    if proc is not None and proc.poll() is None:
        proc.stdin.close()
        proc.kill()
        proc.wait()
