"""Everything for humans goes to stderr: one rich console, progress bars and tables."""

from __future__ import annotations

from functools import lru_cache

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@lru_cache(maxsize=1)
def console() -> Console:
    """The stderr console (results go to stdout, never through this)."""
    return Console(stderr=True, highlight=False)


def progress() -> Progress:
    """A progress bar on stderr: description, bar, done/total, elapsed, remaining, extra text."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
        transient=False,
    )
