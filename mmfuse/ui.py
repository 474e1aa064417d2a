"""Everything for humans goes to stderr: one rich console, progress bars and tables."""

from __future__ import annotations

import os
import sys
from functools import lru_cache

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


@lru_cache(maxsize=1)
def console() -> Console:
    """The stderr console (results go to stdout, never through this). When stderr is not a terminal
    (a log file, CI) and $COLUMNS is unset, tables get 120 columns instead of rich's 80."""
    wide = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=True, highlight=False, width=120 if wide else None)


class LazyProgress:
    """A :func:`progress` that appears only once something reports progress.

    Used where validation may still fail: an error then prints its one line and nothing else.
    """

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def update(self, name: str, completed: int, total: int | None = None) -> None:
        if self._bar is None:
            self._bar = progress()
            self._bar.start()
        if name not in self._tasks:
            self._tasks[name] = self._bar.add_task(name, total=total, info="")
        self._bar.update(self._tasks[name], completed=completed)

    def __enter__(self) -> "LazyProgress":
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, *exc)


class _Progress(Progress):
    """A rich progress bar that, when an error ends it, stops without printing its last frame (on a
    log or pipe that frame would come first): the error's one line is all that shows."""

    def __exit__(self, kind: object, *exc: object) -> None:
        quiet = console().quiet
        console().quiet = quiet or kind is not None
        try:
            self.stop()
        finally:
            console().quiet = quiet


def progress(disable: bool = False) -> Progress:
    """A progress bar on stderr: description, bar, done/total, elapsed, remaining, extra text
    (``disable``: show nothing, e.g. on every rank but the first of a distributed run)."""
    return _Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
        transient=False,
        disable=disable,
    )
