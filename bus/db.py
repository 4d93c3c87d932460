"""The agent's bus store: one SQLite file in WAL mode under the gateway's ``STATE_DIR``.

Connections run in autocommit mode; every write that must be atomic opens its own
``BEGIN IMMEDIATE`` transaction (see :func:`transaction`). ``synchronous=FULL`` makes a
commit durable before the gateway answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from flask import Flask, current_app, g

STORE_NAME = "bus.sqlite3"


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


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in one write transaction: committed on success, rolled back on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
    """Add ``by`` to counter ``name`` (inside the caller's transaction)."""
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


def close_db(exc: BaseException | None = None) -> None:
    """Close the request's connection (registered as a teardown)."""
    db = g.pop("bus_db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    """Create the store and close connections after every request."""
    init_db(store_path(app))
    app.teardown_appcontext(close_db)
