"""How ``mmfuse caption`` prints its results: TSV, plain text, JSON Lines or one JSON array, written
image by image as they come (nothing is held back), with problems reported as warnings."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

from mmfuse.config import DecodeConfig, to_dict
from mmfuse.errors import Interrupted, Terminated
from mmfuse.generate.inputs import Captioned
from mmfuse.workspace import json_path, printable


@dataclass
class Summary:
    """How many inputs there were and which could not be captioned."""

    total: int = 0
    written: int = 0  # results printed whole
    closed: bool = False  # the output's end is written (JSON: the closing bracket)
    paths: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def write_results(results: Iterable[Captioned], decode: DecodeConfig, fmt: str, out: TextIO,
                  warn: Callable[[str], None], command: str = "caption") -> Summary:
    """Print each result as ``fmt`` (tsv, text, jsonl, json) on ``out`` and flush it, warn about each
    skipped input (not when it is the only input: the caller's error then says it all); returns the
    summary. A closed pipe (``| head``) ends the output quietly. ``command``: caption or ask."""
    settings = {"strategy": decode.strategy, **to_dict(decode)}
    summary, status = Summary(), _Status("answered" if command == "ask" else "captioned")
    try:
        if fmt == "json":
            out.write("[")
        for item in results:
            summary.total += 1
            status.tick(summary.total)
            if summary.total == 2 and summary.problems:  # held back while it might be the only input
                warn(f"{summary.problems[0]} (skipped)")
            if item.problem is not None:
                summary.paths.append(item.path)
                summary.problems.append(item.problem)
                if summary.total > 1:
                    warn(f"{item.problem} (skipped)")
                if fmt == "text":  # an empty line keeps line i the i-th input's
                    out.write("\n")
                continue
            text = _format(item, settings, fmt)
            with _signals_held():  # a result is out and counted, or neither: the count in the message is exact
                out.write(("\n" if summary.written == 0 else ",\n") + text if fmt == "json" else text)
                out.flush()
                summary.written += 1
        _close(out, fmt, summary)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: end the output whole, then say where it stopped
        _close(out, fmt, summary)
        closed = " (a closed JSON array)" if fmt == "json" else ""
        raise Interrupted(f"{command} interrupted after {summary.written} image(s): the output{closed} holds their "
                          f"results, each whole; run it again on the inputs that follow", exc) from None
    except BrokenPipeError:  # the reader went away: stop quietly, and keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        status.on = False
        summary.paths.clear()
        summary.problems.clear()
    finally:
        status.done(summary.written)
    return summary


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back until the block ends (Python runs signal handlers in the main
    thread, so recording them there defers them exactly), so that one cannot land between writing a
    result and counting it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if arrived:
        raise Terminated() if arrived[0] == signal.SIGTERM else KeyboardInterrupt()


def _close(out: TextIO, fmt: str, summary: Summary) -> None:
    """End the output (once): a JSON array gets its closing bracket."""
    if fmt == "json" and not summary.closed:
        out.write("\n]\n" if summary.written else "]\n")
    summary.closed = True
    out.flush()


def _format(item: Captioned, settings: dict[str, Any], fmt: str) -> str:
    captions = [" ".join(words) for words, _ in item.captions]
    scores = [round(score, 6) for _, score in item.captions]
    if fmt == "text":  # one line per input: its captions (answers), best first, tab-separated
        return "\t".join(captions) + "\n"
    if fmt == "tsv":
        path = printable(str(item.path))  # a tab or newline in a name cannot break the row
        asked = "" if item.question is None else printable(item.question) + "\t"
        return "".join(f"{path}\t{asked}{c}\t{s:.4f}\n" for c, s in zip(captions, scores))
    if item.question is not None:
        record: dict[str, Any] = {**json_path(item.path), "question": item.question, "answer": captions[0],
                                  "score": scores[0], "answers": captions, "scores": scores, "decoding": settings}
        return json.dumps(record, ensure_ascii=False) + ("\n" if fmt == "jsonl" else "")
    record = {**json_path(item.path), "caption": captions[0], "score": scores[0],
              "captions": captions, "scores": scores, "decoding": settings}
    if item.attention_map is not None:
        record.update(json_path(item.attention_map, "attention_map"))
    return json.dumps(record, ensure_ascii=False) + ("\n" if fmt == "jsonl" else "")


class _Status:
    """'captioned N images' on stderr. On a terminal (when stdout is not one too, so that it never
    mixes with the results) one line redrawn at most twice a second; on a log file or pipe a plain
    line every 30 seconds and a closing one."""

    def __init__(self, verb: str = "captioned") -> None:
        self.verb = verb
        self.plain = not sys.stderr.isatty()
        self.on = self.plain or not sys.stdout.isatty()
        self.every = 30.0 if self.plain else 0.5
        self.start = self.shown = time.monotonic()
        self.count = 0

    def tick(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if self.on and now - self.shown > self.every:
            self.shown = now
            rate = f"{self.verb} {count} images ({count / (now - self.start):.1f}/s)"
            sys.stderr.write(f"{rate}\n" if self.plain else f"\r{rate}")
            sys.stderr.flush()

    def done(self, written: int) -> None:
        """The closing line: how many were captioned (none when nothing was: the error says it all)."""
        if self.on and written and (self.plain or self.shown > self.start):
            sys.stderr.write(f"{'' if self.plain else chr(13)}{self.verb} {written} of {self.count} images in "
                             f"{time.monotonic() - self.start:.1f} s\n")

