"""Operator views of the bus: ``/bus/stats`` and ``/bus/dead-letters`` (owner-signed) and
Prometheus text at ``/metrics`` (public: counts only, no message content)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from bus.db import counters, get_db
from bus.web import authenticate, fail, me

bp = Blueprint("bus_stats", __name__)
COUNTERS = ("received", "duplicates", "delivered", "retried", "dead_lettered")
GAUGES = {
    "outbox_depth": "SELECT COUNT(*) FROM outbox",
    "inbox_messages": "SELECT COUNT(*) FROM inbox",
    "inbox_unacked": "SELECT COUNT(*) FROM inbox WHERE acked_at IS NULL",
    "dead_letters": "SELECT COUNT(*) FROM dead_letters",
}
HELP = {
    "received": "Messages stored in the inbox.",
    "duplicates": "Messages received again (same from + id) and not stored twice.",
    "delivered": "Outbox messages the recipient stored.",
    "retried": "Failed delivery attempts that were rescheduled.",
    "dead_lettered": "Outbox messages given up on.",
    "outbox_depth": "Messages waiting in the outbox.",
    "inbox_messages": "Messages in the inbox.",
    "inbox_unacked": "Inbox messages not acknowledged yet.",
    "dead_letters": "Messages in the dead-letter table.",
}


def bus_stats(db: sqlite3.Connection) -> dict[str, int]:
    """Counters (since the store was created) and current table sizes."""
    found = counters(db)
    stats = {name: found.get(name, 0) for name in COUNTERS}
    stats.update({name: db.execute(sql).fetchone()[0] for name, sql in GAUGES.items()})
    return stats


@bp.get("/bus/stats")
def stats() -> ResponseReturnValue:
    """Outbox depth, delivered, retried, dead-lettered and inbox figures as JSON."""
    authenticate(owner_only=True)
    return jsonify({"agent": me(), **bus_stats(get_db())})


@bp.get("/bus/dead-letters")
def dead_letters() -> ResponseReturnValue:
    """Messages given up on, newest first (``?limit=``, default 100)."""
    authenticate(owner_only=True)
    limit = request.args.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        fail(400, "invalid query", {"limit": f"{limit!r} is not a whole number from 1 to 1000"})
    rows = get_db().execute("SELECT * FROM dead_letters ORDER BY seq DESC LIMIT ?",
                            (int(limit),)).fetchall()
    letters: list[dict[str, Any]] = [
        {"id": row["id"], "to": row["recipient"], "message": json.loads(row["body"]),
         "attempts": row["attempts"], "reason": row["reason"], "last_error": row["last_error"],
         "created_at": row["created_at"], "dead_at": row["dead_at"]}
        for row in rows
    ]
    return jsonify({"agent": me(), "dead_letters": letters})


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus text exposition of :func:`bus_stats`, labelled with the agent."""
    lines = []
    for name, value in bus_stats(get_db()).items():
        kind = "counter" if name in COUNTERS else "gauge"
        metric = f"fleet_bus_{name}_total" if kind == "counter" else f"fleet_bus_{name}"
        lines += [f"# HELP {metric} {HELP[name]}", f"# TYPE {metric} {kind}",
                  f'{metric}{{agent="{me()}"}} {value}']
    return Response("\n".join(lines) + "\n",
                    content_type="text/plain; version=0.0.4; charset=utf-8")
