"""The bus store without Flask: one SQLite file in WAL mode, its schema and its counters.

:func:`init_db` creates or migrates the schema once, under an ``flock`` on
``<store>.lock`` and a ``user_version`` check, so however many gunicorn workers start at
once on a fresh store, exactly one creates it and the others wait, then find it ready.
``journal_mode = WAL`` is set there only (it is persistent in the file); :func:`connect`
sets per-connection pragmas only, so it never needs the exclusive lock that changing the
journal mode takes.
"""

from __future__ import annotations

import sqlite3
from importlib.resources import files
from pathlib import Path

from bus.locks import FileLock
from bus.sqlite import open_db, use_wal

STORE_NAME = "bus.sqlite3"
SCHEMA_VERSION = 2
# Version 1 (no user_version) had no `senders` and `sent` tables: count what is unacked.
MIGRATE_TO_2 = """
INSERT OR REPLACE INTO senders (sender, unacked)
    SELECT sender, COUNT(*) FROM inbox WHERE acked_at IS NULL GROUP BY sender;
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open an initialised store (see :func:`init_db`): :func:`bus.sqlite.open_db`."""
    return open_db(path)


def lock_path(path: str | Path) -> str:
    """The lock file beside the store that orders schema set-up and group commits."""
    return f"{path}.lock"


def init_db(path: str | Path) -> None:
    """Create the store (WAL) or migrate it to :data:`SCHEMA_VERSION`, once, under a lock."""
    with FileLock(lock_path(path)):
        db = connect(path)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            use_wal(db)
            schema = files("bus").joinpath("schema.sql").read_text(encoding="utf-8")
            db.executescript(f"BEGIN IMMEDIATE;\n{schema}\n{MIGRATE_TO_2}\n"
                             f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
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
