"""The deploy queue in SQLite: accept pushes, coalesce waiting ones, claim the next run.

A push that deploys becomes a ``queued`` run. The dispatcher, holding the deploy lock, claims
work in a ``BEGIN IMMEDIATE`` transaction: the newest queued run becomes ``running`` and every
other queued run of the same tag becomes ``superseded`` with ``superseded_by`` pointing at it.
The claimed run deploys what the tag points to when it starts, whichever sha the pushes
claimed, so a burst of pushes (in any order) costs one deploy of the tag's commit, and no push
is lost.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from bus.sqlite import immediate
from bus.timestamps import utc_timestamp
from fleet.webhook.push import Push

# Every status a run can have; the first two are not final.
STATUSES = ("queued", "running", "ok", "degraded", "failed", "unhealthy", "up-to-date",
            "superseded", "interrupted")
HEAL_FORGE = "drift"
"""The ``forge`` of the runs a drift check queues to heal the fleet (self-heal)."""
INTERRUPTED_SUMMARY = ("the receiver stopped during this run (crash or kill); its outcome is "
                       "unknown")


class ReplayError(Exception):
    """The delivery id was seen before (answered with 409)."""

    def __init__(self, delivery_id: str, received_at: str, run_id: int | None) -> None:
        run = f" (run {run_id})" if run_id is not None else ""
        super().__init__(f"delivery {delivery_id!r} was already received at {received_at}{run}; "
                         "replayed deliveries are refused")


@dataclass(frozen=True)
class Claim:
    """A run taken off the queue (``sha``: what its push claimed), and the other queued runs
    of its tag it covers."""

    run_id: int
    sha: str
    tag: str
    superseded: tuple[int, ...]
    heal: bool = False
    """A drift check queued it, or one of the runs it covers: it deploys even when every
    agent runs the release already (the drift is in files, not in the release)."""


def record_ignored(conn: sqlite3.Connection, forge: str, delivery_id: str, event: str,
                   reason: str) -> None:
    """Keep the id of a delivery that does not deploy (so replays of it are refused too)."""
    with immediate(conn):
        _insert_delivery(conn, forge, delivery_id, event, "ignored", reason, None)


def enqueue(conn: sqlite3.Connection, push: Push) -> int:
    """Record ``push`` as a queued run and its delivery; return the run id."""
    with immediate(conn):
        cursor = conn.execute(
            "INSERT INTO runs (delivery_id, forge, tag, sha, before_sha, pusher, repository,"
            " status, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
            (push.delivery_id, push.forge, push.tag or "", push.sha, push.before, push.pusher,
             push.repository, utc_timestamp()))
        run_id = int(cursor.lastrowid or 0)
        _insert_delivery(conn, push.forge, push.delivery_id, push.event, "queued", "", run_id)
    return run_id


def claim_next(conn: sqlite3.Connection) -> Claim | None:
    """Take the newest queued run, supersede the other queued runs of its tag; call only under
    the deploy lock."""
    with immediate(conn):
        newest = conn.execute("SELECT id, sha, tag, forge FROM runs WHERE status = 'queued' "
                              "ORDER BY id DESC LIMIT 1").fetchone()
        if newest is None:
            return None
        covered = conn.execute(
            "SELECT id, forge FROM runs WHERE status = 'queued' AND tag = ? AND id != ? "
            "ORDER BY id DESC", (newest["tag"], newest["id"])).fetchall()
        older = [int(row["id"]) for row in covered]
        heal = HEAL_FORGE in {newest["forge"], *(row["forge"] for row in covered)}
        stamp = utc_timestamp()
        conn.executemany(
            "UPDATE runs SET status = 'superseded', superseded_by = ?, ended_at = ?,"
            " summary = ? WHERE id = ?",
            [(newest["id"], stamp, f"covered by run {newest['id']}, which deploys what tag "
              f"{newest['tag']} points to when it starts", run_id) for run_id in older])
        conn.execute("UPDATE runs SET status = 'running', started_at = ?, worker_pid = ?"
                     " WHERE id = ?", (stamp, os.getpid(), newest["id"]))
    return Claim(int(newest["id"]), newest["sha"], newest["tag"], tuple(older), heal)


def mark_interrupted(conn: sqlite3.Connection) -> list[int]:
    """Close runs left ``running`` by a crashed process; call only under the deploy lock."""
    with immediate(conn):
        ids = [int(row["id"]) for row in
               conn.execute("SELECT id FROM runs WHERE status = 'running'").fetchall()]
        conn.execute("UPDATE runs SET status = 'interrupted', ended_at = ?, summary = ? "
                     "WHERE status = 'running'", (utc_timestamp(), INTERRUPTED_SUMMARY))
    return ids


def queue_depth(conn: sqlite3.Connection) -> int:
    """How many runs wait for the deploy lock."""
    return int(conn.execute("SELECT count(*) FROM runs WHERE status = 'queued'").fetchone()[0])


def _check_replay(conn: sqlite3.Connection, delivery_id: str) -> None:
    """Raise :class:`ReplayError` if ``delivery_id`` was recorded before."""
    seen = conn.execute("SELECT received_at, run_id FROM deliveries WHERE delivery_id = ?",
                        (delivery_id,)).fetchone()
    if seen is not None:
        raise ReplayError(delivery_id, seen["received_at"], seen["run_id"])


def _insert_delivery(conn: sqlite3.Connection, forge: str, delivery_id: str, event: str,
                     outcome: str, reason: str, run_id: int | None) -> None:
    """Record one delivery (refusing a replay)."""
    _check_replay(conn, delivery_id)
    conn.execute("INSERT INTO deliveries (delivery_id, forge, event, received_at, outcome,"
                 " reason, run_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (delivery_id, forge, event, utc_timestamp(), outcome, reason, run_id))
