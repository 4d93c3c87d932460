"""Unclosed SQLite connections fail the tests on every Python, naming where they were opened.

Python 3.13 warns (``ResourceWarning``) when a ``sqlite3.Connection`` is garbage-collected
unclosed, and pytest's ``filterwarnings = ["error"]`` with its unraisable-exception handling
turns that into an error; earlier Pythons say nothing. :func:`track_connections` makes every
``sqlite3.connect`` in the test process return a :class:`TrackedConnection`, which warns the
same way on any Python and adds the lines that opened it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import traceback
import warnings
from typing import Any

STACK_LINES = 6


class TrackedConnection(sqlite3.Connection):
    """A connection that remembers where it was opened and warns if collected unclosed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        frames = traceback.walk_stack(sys._getframe(2))
        self.opened_at = traceback.StackSummary.extract(frames, limit=STACK_LINES,
                                                        lookup_lines=False)
        self.open = True

    def close(self) -> None:
        """Close it (and forget it)."""
        self.open = False
        super().close()

    def __del__(self) -> None:
        if not getattr(self, "open", False):
            return
        self.open = False
        where = "".join(self.opened_at.format())
        try:
            warnings.warn(f"unclosed database {self!r}, opened at (innermost first):\n{where}",
                          ResourceWarning, stacklevel=1)
        finally:
            with contextlib.suppress(sqlite3.Error):  # opened in another thread
                super().close()  # once is enough: no second warning from Python 3.13


def track_connections() -> None:
    """Make ``sqlite3.connect`` return :class:`TrackedConnection` (unless given a factory)."""
    connect = sqlite3.connect
    if getattr(connect, "tracked", False):
        return

    def tracked(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", TrackedConnection)
        return connect(*args, **kwargs)

    tracked.tracked = True  # type: ignore[attr-defined]
    sqlite3.connect = tracked  # type: ignore[assignment]
