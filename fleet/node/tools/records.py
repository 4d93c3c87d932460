"""Every tool call, recorded in the agent's state dir (``tools.sqlite3``), refused ones too.

One row per ``POST /tools/NAME``: who signed it (``caller``; None when the signature did not
verify), the request it was made for (``on_behalf_of`` and ``request_id``: the original
requester, when an agent's runtime calls a tool while answering a request), the call's id
(``call_id``: a replayed call is refused by it), tool, arguments (whole JSON, secret-looking
names masked; None when refused before they were read), ``outcome`` (``running``, ``ok``,
``failed``, ``timeout``, ``error``: could not run, ``refused``), the HTTP ``status``, the
refusal or failure (``error``), exit code and duration.

A call that runs claims ``(caller, call_id)`` first (:func:`claim`, through the gateway's one
replay guard, :mod:`bus.replay`): the same pair again is a replay and is refused
(:class:`bus.replay.ReplayError`), as the bus stores a sender's message id once.

Both tables are bounded: the newest :data:`KEEP_CALLS` calls are kept, and a claimed id for
:data:`bus.replay.KEEP_IDS_S` seconds (far past the signature window, after which a captured call is
refused as too old anyway); older rows go every :data:`PRUNE_EVERY` calls.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from typing import Any, TypedDict

from bus import replay
from bus.sqlite import open_db, use_wal

STORE = "tools.sqlite3"
SECRET_NAME = re.compile(r"(?i).*(key|token|secret|password|passwd|credential).*")
MASK = "***"
MAX_ERROR = 500
KEEP_CALLS = 10_000
"""How many of the newest calls the record keeps."""
PRUNE_EVERY = 100
CALL_HINT = "Give every new call a new `id` (or sign it anew)."
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tool_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, caller TEXT,
    on_behalf_of TEXT, request_id TEXT, call_id TEXT, tool TEXT NOT NULL, args TEXT,
    outcome TEXT NOT NULL, status INTEGER, error TEXT, exit INTEGER, duration_ms REAL)""",
    replay.SCHEMA,
)
# Releases before this one kept `calls` (no status, ids or on-behalf-of; args cut at 2,000
# characters, so possibly not JSON): their rows move over once.
MIGRATE = (
    """INSERT INTO tool_calls (at, caller, tool, args, outcome, exit, duration_ms)
    SELECT at, caller, tool, args, outcome, exit, duration_ms FROM calls ORDER BY seq""",
    "DROP TABLE calls",
)


class ToolCall(TypedDict):
    """One recorded call, as ``GET /tool-calls`` lists it."""

    seq: int
    at: float
    caller: str | None
    on_behalf_of: str | None
    request_id: str | None
    call_id: str | None
    tool: str
    args: Any
    outcome: str
    status: int | None
    error: str | None
    exit: int | None
    duration_ms: float | None


def masked(args: Any) -> Any:
    """``args`` with values of secret-looking names replaced by ``***``, at any depth."""
    if isinstance(args, dict):
        return {key: MASK if SECRET_NAME.fullmatch(str(key)) else masked(value)
                for key, value in args.items()}
    if isinstance(args, list):
        return [masked(value) for value in args]
    return args


def connect(state_dir: str | Path) -> sqlite3.Connection:
    """The record store (created, or moved over from an earlier release, on first use)."""
    db = open_db(Path(state_dir) / STORE)
    try:
        use_wal(db)
        if not _exists(db, "call_ids"):
            db.execute("BEGIN IMMEDIATE")  # one gunicorn worker creates, the others wait
            # compatibility: until 0.3.0: a tool record's calls table
            for statement in SCHEMA + (MIGRATE if _exists(db, "calls") else ()):
                db.execute(statement)
            db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _exists(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                      (table,)).fetchone() is not None


def _insert(db: sqlite3.Connection, fields: dict[str, Any]) -> int:
    row = {"at": time.time(), "caller": None, "on_behalf_of": None, "request_id": None,
           "call_id": None, "args": None, "outcome": "refused", "status": None, "error": None,
           "exit": None, "duration_ms": None, **fields}
    row["args"] = None if row["args"] is None else json.dumps(masked(row["args"]))
    row["error"] = _short(row["error"])
    names = ", ".join(row)
    cursor = db.execute(f"INSERT INTO tool_calls ({names}) VALUES "
                        f"({', '.join(':' + name for name in row)})", row)
    seq = int(cursor.lastrowid or 0)
    if seq % PRUNE_EVERY == 0:
        prune(db, seq)
    return seq


def prune(db: sqlite3.Connection, newest: int, now: float | None = None) -> None:
    """Drop the calls older than the newest :data:`KEEP_CALLS` and the claimed ids older than
    :data:`bus.replay.KEEP_IDS_S` (inside the caller's transaction)."""
    db.execute("DELETE FROM tool_calls WHERE seq <= ?", (newest - KEEP_CALLS,))
    replay.prune(db, now)


def _short(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_ERROR else text[:MAX_ERROR - 3] + "..."


def record(state_dir: str | Path, tool: str, **fields: Any) -> int:
    """Add one call that did not run (``fields``: caller, args, status, error, ...); its
    ``seq``."""
    db = connect(state_dir)
    try:
        with db:
            return _insert(db, {"tool": tool, **fields})
    finally:
        db.close()


def claim(state_dir: str | Path, caller: str, call_id: str, tool: str, **fields: Any) -> int:
    """Record a call about to run (outcome ``running``) and claim its id; its ``seq``, or
    :class:`bus.replay.ReplayError` when ``caller`` used ``call_id`` before (then nothing is
    added)."""
    db = connect(state_dir)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = _insert(db, {"tool": tool, "caller": caller, "call_id": call_id,
                               "outcome": "running", **fields})
            replay.claim(db, caller, call_id, "tool call", seq, hint=CALL_HINT)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seq
    finally:
        db.close()


def finish(state_dir: str | Path, seq: int, outcome: str, **fields: Any) -> None:
    """Set how call ``seq`` ended (``fields``: status, error, exit, duration_ms)."""
    allowed = {"status", "error", "exit", "duration_ms"}
    values = {name: value for name, value in fields.items() if name in allowed}
    values["error"] = _short(values.get("error"))
    sets = ", ".join(f"{name} = :{name}" for name in values)
    db = connect(state_dir)
    try:
        with db:
            db.execute(f"UPDATE tool_calls SET outcome = :outcome, {sets} WHERE seq = :seq",
                       {**values, "outcome": outcome, "seq": seq})
    finally:
        db.close()


def _loads(text: str | None) -> Any:
    """Stored arguments; a row an earlier release cut short comes back as its text."""
    # compatibility: until 0.3.0: tool arguments cut short
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def calls(state_dir: str | Path, limit: int = 100) -> list[ToolCall]:
    """The latest calls, newest first."""
    db = connect(state_dir)
    try:
        rows = db.execute("SELECT * FROM tool_calls ORDER BY seq DESC LIMIT ?",
                          (limit,)).fetchall()
    finally:
        db.close()
    return [ToolCall(seq=row["seq"], at=row["at"], caller=row["caller"],
                     on_behalf_of=row["on_behalf_of"], request_id=row["request_id"],
                     call_id=row["call_id"], tool=row["tool"], args=_loads(row["args"]),
                     outcome=row["outcome"], status=row["status"], error=row["error"],
                     exit=row["exit"], duration_ms=row["duration_ms"]) for row in rows]
