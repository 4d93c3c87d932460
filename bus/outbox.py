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
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.sqlite import immediate
from bus.store import bump

DELIVERY_MS = "delivery_ms:"  # counter prefix: milliseconds from queued to stored, summed
DELIVERY_COUNT = "delivery_count:"  # counter prefix: deliveries counted in DELIVERY_MS


def enqueue(db: sqlite3.Connection, message: dict[str, Any], recipients: list[str],
            now: float | None = None) -> tuple[bool, list[str]]:
    """Queue ``message`` once per recipient (as its ``to``) in the caller's transaction,
    unless its id was sent before: ``(True, recipients)``, or ``(False, the recipients of
    the first send)`` when nothing was queued."""
    now = time.time() if now is None else now
    first = db.execute("INSERT INTO sent (id, recipients, created_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (id) DO NOTHING",
                       (message["id"], json.dumps(recipients), now)).rowcount == 1
    if not first:
        row = db.execute("SELECT recipients FROM sent WHERE id = ?", (message["id"],)).fetchone()
        return False, list(json.loads(row[0]))
    ttl = message.get("ttl")
    expires = now + ttl if ttl else None
    for recipient in recipients:
        body = json.dumps({**message, "to": recipient}, separators=(",", ":"))
        db.execute(
            "INSERT INTO outbox (id, recipient, body, created_at, expires_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id, recipient) DO NOTHING",
            (message["id"], recipient, body, now, expires, now))
    return True, recipients


def redrive(db: sqlite3.Connection, seqs: Collection[int] | None = None,
            now: float | None = None) -> list[tuple[str, str]]:
    """Move dead letters (those with ``seqs``, or all) back into the outbox for a fresh
    round of attempts (in the caller's transaction); their ``(id, recipient)`` pairs."""
    now = time.time() if now is None else now
    where, params = "1", tuple(seqs or ())
    if seqs is not None:
        if not seqs:
            return []
        where = f"seq IN ({', '.join('?' * len(seqs))})"
    moved = db.execute(f"SELECT seq, id, recipient, body FROM dead_letters WHERE {where}"
                       " ORDER BY seq", params).fetchall()
    for row in moved:
        db.execute(
            "INSERT INTO outbox (id, recipient, body, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id, recipient) DO NOTHING",
            (row["id"], row["recipient"], row["body"], now, now))
        db.execute("DELETE FROM dead_letters WHERE seq = ?", (row["seq"],))
    bump(db, "redriven", len(moved))
    return [(row["id"], row["recipient"]) for row in moved]


def _due(exclude: Collection[str]) -> str:
    """WHERE clause of claimable rows (2 + len(exclude) parameters: now, now, names)."""
    skip = f" AND recipient NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    return f"next_attempt_at <= ? AND lease_until <= ?{skip}"


def has_due(db: sqlite3.Connection, exclude: Collection[str] = (),
            now: float | None = None) -> bool:
    """Whether a row (not to ``exclude``) can be claimed: a read, so it takes no write lock."""
    now = time.time() if now is None else now
    sql = f"SELECT 1 FROM outbox WHERE {_due(exclude)} LIMIT 1"
    return db.execute(sql, (now, now, *exclude)).fetchone() is not None


def claim(db: sqlite3.Connection, owner: str, lease_seconds: float, limit: int,
          exclude: Collection[str] = (), now: float | None = None) -> list[sqlite3.Row]:
    """Lease up to ``limit`` due rows (not to ``exclude``) to ``owner``, counting the attempt
    (one UPDATE, in the caller's transaction)."""
    now = time.time() if now is None else now
    params = (now, now, *exclude)
    return db.execute(
        "UPDATE outbox SET lease_owner = ?, lease_until = ?, attempts = attempts + 1"
        f" WHERE seq IN (SELECT seq FROM outbox WHERE {_due(exclude)}"
        " ORDER BY next_attempt_at, seq LIMIT ?)"
        " RETURNING seq, id, recipient, body, attempts, expires_at, created_at",
        (owner, now + lease_seconds, *params, limit),
    ).fetchall()


def next_due(db: sqlite3.Connection, exclude: Collection[str] = ()) -> float | None:
    """When the next row (not to ``exclude``) becomes claimable; None if there is none."""
    skip = f" WHERE recipient NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    row = db.execute(f"SELECT MIN(MAX(next_attempt_at, lease_until)) FROM outbox{skip}",
                     tuple(exclude)).fetchone()
    return None if row[0] is None else float(row[0])


@dataclass(frozen=True)
class Outcome:
    """How one claimed row's attempt ended: delivered, retry at ``retry_at``, or dead."""

    seq: int
    retry_at: float | None = None
    dead_reason: str | None = None
    error: str | None = None


def finish(db: sqlite3.Connection, owner: str, outcomes: list[Outcome],
           down: dict[str, tuple[float, str]], max_attempts: int,
           created_before: float) -> None:
    """Record a batch of attempts (in the caller's transaction).

    ``down`` maps recipients that could not be reached to (retry time, error): their other
    due rows are postponed too, counting as a failed attempt, instead of hammering a host
    that is down; those queued before ``created_before`` or with ``max_attempts`` (when not
    0) go to the dead letters.
    """
    now = time.time()
    for outcome in outcomes:
        mine = (outcome.seq, owner)
        if outcome.dead_reason is not None:
            _bury(db, "seq = ? AND lease_owner = ?", mine, outcome.dead_reason,
                  outcome.error, now)
        elif outcome.retry_at is not None:
            bump(db, "retried", db.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = 0, next_attempt_at = ?,"
                " last_error = ? WHERE seq = ? AND lease_owner = ?",
                (outcome.retry_at, outcome.error, *mine)).rowcount)
        else:
            row = db.execute("SELECT recipient, created_at FROM outbox"
                             " WHERE seq = ? AND lease_owner = ?", mine).fetchone()
            delivered = db.execute(
                "DELETE FROM outbox WHERE seq = ? AND lease_owner = ?", mine).rowcount
            bump(db, "delivered", delivered)
            if delivered and row is not None:  # queued-to-stored time, per recipient
                bump(db, f"{DELIVERY_MS}{row[0]}", max(0, round((now - row[1]) * 1000)))
                bump(db, f"{DELIVERY_COUNT}{row[0]}")
    for recipient, (retry_at, error) in down.items():
        bump(db, "retried", db.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE recipient = ? AND lease_until <= ? AND next_attempt_at <= ?",
            (retry_at, error, recipient, now, now)).rowcount)
        _bury(db, "recipient = ? AND lease_until <= ? AND created_at < ?",
              (recipient, now, created_before), horizon_reason(round(now - created_before)),
              None, now)
        if max_attempts:
            _bury(db, "recipient = ? AND lease_until <= ? AND attempts >= ?",
                  (recipient, now, max_attempts), attempts_reason(max_attempts), None, now)


def horizon_reason(horizon: float, attempts: int | None = None) -> str:
    """A dead letter's reason when its age decided: older than the retry horizon."""
    tried = f" after {attempts} attempts" if attempts is not None else ""
    return f"gave up{tried}: queued longer than the retry horizon ({_span(horizon)})"


def attempts_reason(max_attempts: int) -> str:
    """A dead letter's reason when the attempt cap decided."""
    return f"gave up after {max_attempts} attempts: the most allowed (max_attempts)"


def _span(seconds: float) -> str:
    """``seconds`` as the largest whole unit that fits: ``3 d``, ``2 h``, ``90 s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g} {unit}"
    return f"{seconds:g} s"


def _bury(db: sqlite3.Connection, where: str, params: tuple[Any, ...], reason: str,
          error: str | None, now: float) -> None:
    """Move the rows matching ``where`` to ``dead_letters`` (in the caller's transaction)."""
    moved = db.execute(
        "INSERT INTO dead_letters (id, recipient, body, created_at, attempts, reason,"
        " last_error, dead_at) SELECT id, recipient, body, created_at, attempts, ?,"
        f" COALESCE(?, last_error), ? FROM outbox WHERE {where}",
        (reason, error, now, *params)).rowcount
    if moved:
        db.execute(f"DELETE FROM outbox WHERE {where}", params)
        bump(db, "dead_lettered", moved)


def release_dead_leases(db: sqlite3.Connection) -> int:
    """Free leases held by processes of this host that no longer run (after a crash)."""
    owners = [row[0] for row in db.execute(
        "SELECT DISTINCT lease_owner FROM outbox WHERE lease_owner IS NOT NULL")]
    dead = [owner for owner in owners if not _alive(owner)]
    with immediate(db):
        return sum(db.execute("UPDATE outbox SET lease_owner = NULL, lease_until = 0"
                              " WHERE lease_owner = ?", (owner,)).rowcount for owner in dead)


def process_tag(pid: int | None = None) -> str:
    """``PID.STARTTIME`` of a process: unlike the PID alone, never reused (Linux /proc)."""
    pid = os.getpid() if pid is None else pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return f"{pid}.0"
    return f"{pid}.{fields[19]}"


def _alive(owner: str) -> bool:
    """Whether the process named in ``owner`` (``PID.STARTTIME:token:thread``) still runs
    (a zombie or a new process with a reused PID does not count)."""
    tag = owner.split(":", 1)[0]
    pid, _, started = tag.partition(".")
    if not pid.isdigit():
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    if state == "Z":
        return False
    return started == "0" or process_tag(int(pid)) == tag
