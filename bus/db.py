"""The bus store inside a Flask app: a read connection per request, group-committed writes.

Reads use the request's connection (:func:`get_db`); writes go through the process's
:class:`bus.writer.GroupWriter` (:func:`write`), which commits them in batches.
The store itself (:mod:`bus.store`) knows nothing of Flask.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from flask import g

from bus.state import state
from bus.store import connect

T = TypeVar("T")


def get_db() -> sqlite3.Connection:
    """The request's connection to the bus store, opened once and cached on ``g``."""
    if "bus_db" not in g:
        g.bus_db = connect(state().store)
    db: sqlite3.Connection = g.bus_db
    return db


def write(change: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``change(db)`` in a committed write transaction (group commit); its result."""
    return state().writer.run(change)


def close_db(exc: BaseException | None = None) -> None:
    """Close the request's connection (registered as a teardown)."""
    db = g.pop("bus_db", None)
    if db is not None:
        db.close()
