"""Everything for humans goes to stderr, through one rich console: tables and messages here, progress
bars in :mod:`mmfuse.progress` (apart, so that printing a report never imports them)."""

from __future__ import annotations

import os
import sys
from functools import lru_cache

from rich.console import Console


@lru_cache(maxsize=1)
def console() -> Console:
    """The stderr console (results go to stdout, never through this). When stderr is not a terminal
    (a log file, CI) and $COLUMNS is unset, tables get 120 columns instead of rich's 80. Text is
    shown as written: no emoji codes (a caption's ``:dog:`` stays ``:dog:``; and rich's table of
    codes, 2 ms to import, is never loaded)."""
    wide = not sys.stderr.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=True, highlight=False, emoji=False, width=120 if wide else None)
