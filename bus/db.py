"""The agent's bus store: one SQLite file in WAL mode under the gateway's ``STATE_DIR``.

Reads use the request's connection (:func:`get_db`); writes go through the process's
:class:`bus.writer.GroupWriter` (:func:`write`), which commits them in batches.
``synchronous=FULL`` makes a commit durable before the gateway answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from flask import Flask, current_app, g

if TYPE_CHECKING:
    from bus.writer import GroupWriter

STORE_NAME = "bus.sqlite3"
T = TypeVar("T")


def store_path(app: Flask) -> Path:
    """Where ``app``'s bus store lives: ``<STATE_DIR>/bus.sqlite3``."""
    return Path(app.config["STATE_DIR"]) / STORE_NAME


def connect(path: str | Path) -> sqlite3.Connection:
    """Open the store (created with its schema if new) in WAL mode, autocommit."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    return db


def init_db(path: str | Path) -> None:
    """Create the tables of ``schema.sql`` if they do not exist yet."""
    db = connect(path)
    try:
        db.executescript(files("bus").joinpath("schema.sql").read_text(encoding="utf-8"))
    finally:
        db.close()


def bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to counter ``name`` (inside the caller's transaction)."""
    if by == 0:
        return
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )


def counters(db: sqlite3.Connection) -> dict[str, int]:
    """Every counter by name."""
    return {row["name"]: row["value"] for row in db.execute("SELECT name, value FROM counters")}


def get_db() -> sqlite3.Connection:
    """The request's connection to the bus store, opened once and cached on ``g``."""
    if "bus_db" not in g:
        g.bus_db = connect(store_path(current_app))
    db: sqlite3.Connection = g.bus_db
    return db


def write(change: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``change(db)`` in a committed write transaction (group commit); its result."""
    writer: GroupWriter = current_app.extensions["bus.writer"]
    return writer.run(change)


def close_db(exc: BaseException | None = None) -> None:
    """Close the request's connection (registered as a teardown)."""
    db = g.pop("bus_db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Create the store, its group-commit writer, and close connections after requests."""
    from bus.writer import GroupWriter

    init_db(store_path(app))
    app.extensions["bus.writer"] = GroupWriter(store_path(app))
    app.teardown_appcontext(close_db)
