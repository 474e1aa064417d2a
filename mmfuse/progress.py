"""Progress bars on stderr: rich's on a terminal, plain lines on a log, a pipe or CI."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mmfuse.ui import console


class LazyProgress:
    """A :func:`progress` that appears only once something reports progress.

    Used where validation may still fail: an error then prints its one line and nothing else.
    """

    def __init__(self) -> None:
        self._bar: Progress | PlainProgress | None = None
        self._tasks: dict[str, TaskID | int] = {}

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


class PlainProgress:
    """Progress as plain lines, for a stderr that is not a terminal (a log file, CI, a pipe): once a
    task has run ``quiet_s`` seconds, a line whenever another tenth of it is done or a minute has
    passed, and a closing line when it ends well (an error prints its one line alone); no animation.
    The subset of rich's ``Progress`` that mmfuse uses."""

    def __init__(self, disable: bool = False, every_s: float = 60.0, quiet_s: float = 2.0) -> None:
        self.disable, self.every_s, self.quiet_s = disable, every_s, quiet_s
        self._tasks: list[dict[str, Any]] = []

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = time.monotonic()
        self._tasks.append({"name": description, "total": total, "done": completed, "info": fields.get("info", ""),
                            "start": now, "shown_at": now, "shown_tenth": -1, "finished": False})
        return len(self._tasks) - 1

    def update(self, task: int, completed: float | None = None, advance: float | None = None, **fields: Any) -> None:
        t = self._tasks[task]
        t["done"] = completed if completed is not None else t["done"] + (advance or 0)
        t["info"] = fields.get("info", t["info"])
        tenth = int(10 * t["done"] / t["total"]) if t["total"] else -1
        now = time.monotonic()
        if now - t["start"] >= self.quiet_s and (tenth > t["shown_tenth"] or now - t["shown_at"] >= self.every_s):
            self._line(t)

    def _line(self, t: dict[str, Any]) -> None:
        t["shown_at"] = time.monotonic()
        t["shown_tenth"] = int(10 * t["done"] / t["total"]) if t["total"] else -1
        t["finished"] = bool(t["total"]) and t["done"] >= t["total"]
        if self.disable:
            return
        done = f"{t['done']:g}/{t['total']:g}" if t["total"] else f"{t['done']:g}"
        elapsed = int(t["shown_at"] - t["start"])
        info = f"  {t['info']}" if t["info"] else ""
        sys.stderr.write(f"{t['name']}: {done}  {elapsed // 60}:{elapsed % 60:02d} elapsed{info}\n")
        sys.stderr.flush()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for t in self._tasks:
            if not t["finished"]:
                self._line(t)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:  # an error prints its one line alone
            self.stop()


def progress(disable: bool = False) -> Progress | PlainProgress:
    """A progress bar on stderr: description, bar, done/total, elapsed, remaining, extra text
    (``disable``: show nothing, e.g. on every rank but the first of a distributed run); plain lines
    (:class:`PlainProgress`) when stderr is not a terminal."""
    if not console().is_terminal:
        return PlainProgress(disable)
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
