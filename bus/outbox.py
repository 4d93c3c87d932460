"""The outbox: messages waiting for delivery, one row per (message, recipient).

Rows are claimed with a lease (``lease_owner``, ``lease_until``) in one UPDATE, so two
delivery threads or gunicorn workers never send the same row at once; a lease whose owner
process died is released when a worker starts, and any lease expires after its time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from bus.db import bump, transaction


def enqueue(db: sqlite3.Connection, message: dict[str, Any], recipients: list[str],
            now: float | None = None) -> int:
    """Commit ``message`` once per recipient (as its ``to``); rows already queued are kept."""
    now = time.time() if now is None else now
    ttl = message.get("ttl")
    expires = now + ttl if ttl else None
    added = 0
    with transaction(db):
        for recipient in recipients:
            body = json.dumps({**message, "to": recipient}, separators=(",", ":"))
            added += db.execute(
                "INSERT INTO outbox (id, recipient, body, created_at, expires_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, recipient) DO NOTHING",
                (message["id"], recipient, body, now, expires, now),
            ).rowcount
    return added


def claim(db: sqlite3.Connection, owner: str, lease_seconds: float, limit: int,
          now: float | None = None) -> list[sqlite3.Row]:
    """Lease up to ``limit`` due rows to ``owner`` and count the attempt (one atomic UPDATE)."""
    now = time.time() if now is None else now
    return db.execute(
        "UPDATE outbox SET lease_owner = ?, lease_until = ?, attempts = attempts + 1"
        " WHERE seq IN (SELECT seq FROM outbox WHERE next_attempt_at <= ? AND lease_until <= ?"
        " ORDER BY next_attempt_at, seq LIMIT ?)"
        " RETURNING seq, id, recipient, body, attempts, expires_at",
        (owner, now + lease_seconds, now, now, limit),
    ).fetchall()


def next_due(db: sqlite3.Connection) -> float | None:
    """When the next row becomes claimable (None for an empty outbox)."""
    row = db.execute("SELECT MIN(MAX(next_attempt_at, lease_until)) FROM outbox").fetchone()
    return None if row[0] is None else float(row[0])


def delivered(db: sqlite3.Connection, seq: int, owner: str) -> None:
    """The recipient stored the row's message: drop it from the outbox."""
    with transaction(db):
        if db.execute("DELETE FROM outbox WHERE seq = ? AND lease_owner = ?",
                      (seq, owner)).rowcount:
            bump(db, "delivered")


def retry(db: sqlite3.Connection, seq: int, owner: str, at: float, error: str) -> None:
    """A failed attempt: release the row until ``at``."""
    with transaction(db):
        if db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = 0, next_attempt_at = ?,"
                      " last_error = ? WHERE seq = ? AND lease_owner = ?",
                      (at, error, seq, owner)).rowcount:
            bump(db, "retried")


def dead_letter(db: sqlite3.Connection, seq: int, owner: str, reason: str,
                error: str | None = None) -> None:
    """Give up on a row: move it to ``dead_letters`` with why."""
    with transaction(db):
        moved = db.execute(
            "INSERT INTO dead_letters (id, recipient, body, created_at, attempts, reason,"
            " last_error, dead_at) SELECT id, recipient, body, created_at, attempts, ?,"
            " COALESCE(?, last_error), ? FROM outbox WHERE seq = ? AND lease_owner = ?",
            (reason, error, time.time(), seq, owner),
        ).rowcount
        if moved:
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            bump(db, "dead_lettered")


def release_dead_leases(db: sqlite3.Connection) -> int:
    """Free leases held by processes of this host that no longer run (after a crash)."""
    owners = [row[0] for row in db.execute(
        "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner IS NOT NULL")]
    dead = [owner for owner in owners if not _alive(owner)]
    with transaction(db):
        return sum(db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = 0"
                              " WHERE lease_owner = ?", (owner,)).rowcount for owner in dead)


def _alive(owner: str) -> bool:
    """Whether the process named in ``owner`` (``PID:token:thread``) still runs."""
    try:
        os.kill(int(owner.split(":", 1)[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True
