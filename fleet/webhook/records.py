"""Read the run records: the one shape used by ``GET /runs``, ``fleet runs`` and the tests.

``sha`` is what the push claimed, ``commit_sha`` what the tag pointed to when the run started
(the commit deployed), ``release`` its release id; ``fleet_run_id`` / ``record_path`` name the
fleet run record the deploy wrote, whose per-host outcome (``hosts``) and ``stages`` the run
keeps (both null when no deploy started, e.g. ``up-to-date``; ``record_path`` null when the
deploy wrote no record). ``rollback`` is true when the tag was moved back to an ancestor of
the commit the fleet ran (``rollback_from``: that commit's release).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from fleet.core.errors import WebhookError

LOG_TAIL_BYTES = 256 * 1024
FIELDS = ("id", "status", "forge", "tag", "sha", "commit_sha", "release", "before_sha",
          "pusher", "repository", "delivery_id", "superseded_by", "queued_at", "started_at",
          "ended_at", "exit_status", "worker_pid", "fleet_run_id", "record_path", "summary",
          "log_path", "rollback_from")


def run_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    """One run as plain data; ``hosts``, ``stages`` and ``health`` decoded from their JSON
    columns."""
    data = {field: row[field] for field in FIELDS}
    data["rollback"] = row["rollback_from"] is not None
    data["hosts"] = json.loads(row["hosts"] or "{}")
    data["stages"] = json.loads(row["stages"] or "[]")
    data["health"] = json.loads(row["health"] or "[]")
    return data


def list_runs(conn: sqlite3.Connection, limit: int = 50, status: str | None = None,
              before: int | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` runs (optionally of one ``status``, and older than run ``before``),
    newest first."""
    return [run_to_dict(row) for row in _select(conn, limit, status, before)]


def page_runs(conn: sqlite3.Connection, limit: int = 50, status: str | None = None,
              before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
    """One page of :func:`list_runs` and the ``before`` of the next page (None: no more)."""
    rows = _select(conn, limit + 1, status, before)
    runs = [run_to_dict(row) for row in rows[:limit]]
    return runs, (runs[-1]["id"] if len(rows) > limit else None)


def _select(conn: sqlite3.Connection, limit: int, status: str | None,
            before: int | None) -> list[sqlite3.Row]:
    """Up to ``limit`` rows of ``runs``, newest first, filtered by ``status`` and ``before``."""
    where = [("status = ?", status) if status else None,
             ("id < ?", before) if before is not None else None]
    terms = [term for term in where if term is not None]
    clause = f" WHERE {' AND '.join(text for text, _ in terms)}" if terms else ""
    return conn.execute(f"SELECT * FROM runs{clause} ORDER BY id DESC LIMIT ?",
                        (*(value for _, value in terms), limit)).fetchall()


def get_run(conn: sqlite3.Connection, run_id: int, with_log: bool = True) -> dict[str, Any]:
    """One run with the tail of its log; :class:`WebhookError` when there is no such run."""
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise WebhookError(f"run {run_id} doesn't exist",
                           hint="List the runs with `fleet runs`.")
    data = run_to_dict(row)
    covered = conn.execute("SELECT id FROM runs WHERE superseded_by = ? ORDER BY id",
                           (run_id,)).fetchall()
    data["covers"] = [int(item["id"]) for item in covered]
    if with_log:
        data["log"] = read_log_tail(data["log_path"])
    return data


def read_log_tail(path: str | None, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a run's log ('' when it has none yet)."""
    if not path:
        return ""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text if size <= limit else f"[... first {size - limit} bytes cut ...]\n{text}"
