"""Every tool call, recorded in the agent's state dir (``tools.sqlite3``): caller, tool,
arguments (secret-looking ones masked), outcome, exit code, duration."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

STORE = "tools.sqlite3"
SECRET_NAME = re.compile(r"(?i).*(key|token|secret|password|passwd|credential).*")
MASK = "***"
SCHEMA = """CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, caller TEXT NOT NULL,
    tool TEXT NOT NULL, args TEXT NOT NULL, outcome TEXT NOT NULL, exit INTEGER,
    duration_ms REAL)"""


def masked(args: Any) -> Any:
    """``args`` with values of secret-looking names replaced by ``***``."""
    if not isinstance(args, dict):
        return args
    return {key: MASK if SECRET_NAME.fullmatch(str(key)) else value
            for key, value in args.items()}


def connect(state_dir: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(Path(state_dir) / STORE, timeout=30)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(SCHEMA)
    return db


def record(state_dir: str | Path, caller: str, tool: str, args: Any, outcome: str,
           exit: int | None = None, duration_ms: float | None = None) -> None:
    """Add one call (``outcome``: ok, failed, timeout, refused: ...)."""
    db = connect(state_dir)
    try:
        with db:
            db.execute("INSERT INTO calls (at, caller, tool, args, outcome, exit, duration_ms)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (time.time(), caller, tool, json.dumps(masked(args))[:2000], outcome,
                        exit, duration_ms))
    finally:
        db.close()


def calls(state_dir: str | Path, limit: int = 100) -> list[dict[str, Any]]:
    """The latest calls, newest first."""
    db = connect(state_dir)
    try:
        rows = db.execute("SELECT * FROM calls ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
    finally:
        db.close()
    return [{**dict(row), "args": json.loads(row["args"])} for row in rows]
