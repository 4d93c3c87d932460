"""Operator views of the bus: ``/bus/stats``, ``/bus/dead-letters`` and
``POST /bus/dead-letters/redrive`` (owner-signed) and Prometheus text at ``/metrics``
(public: counts only, no message content)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from bus import replay
from bus.db import get_db, write
from bus.outbox import DELIVERY_COUNT, DELIVERY_MS, redrive
from bus.schema import query_problems
from bus.state import state
from bus.store import counters
from bus.validate import fields_problems
from bus.web import authenticate, fail, json_body, me, signature_id

bp = Blueprint("bus_stats", __name__)
COUNTERS = ("received", "duplicates", "delivered", "retried", "dead_lettered", "redriven")
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
    "redriven": "Dead letters an operator queued again.",
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


def delivery_by_region(db: sqlite3.Connection) -> dict[str, dict[str, float]]:
    """Per recipient region (``none`` for agents without one): messages delivered and their
    total and mean time from queued to stored by the recipient (ms), since the store was
    created. A region cut off shows here as a mean that grows until it heals."""
    found = counters(db)
    agents = state().agents
    regions: dict[str, dict[str, float]] = {}
    for name, count in sorted(found.items()):
        if not name.startswith(DELIVERY_COUNT) or not count:
            continue
        recipient = name.removeprefix(DELIVERY_COUNT)
        region = getattr(agents.get(recipient), "region", None) or "none"
        entry = regions.setdefault(region, {"delivered": 0, "latency_ms_sum": 0})
        entry["delivered"] += count
        entry["latency_ms_sum"] += found.get(f"{DELIVERY_MS}{recipient}", 0)
    for entry in regions.values():
        entry["latency_ms_mean"] = round(entry["latency_ms_sum"] / entry["delivered"], 1)
    return regions


@bp.get("/bus/stats")
def stats() -> ResponseReturnValue:
    """Outbox depth, delivered, retried, dead-lettered and inbox figures, and delivery
    latency by the recipients' region, as JSON."""
    authenticate(owner_only=True)
    db = get_db()
    return jsonify({"agent": me(), **bus_stats(db), "delivery_by_region": delivery_by_region(db)})


DEAD_LETTER_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000,
              "description": "a whole number from 1 to 1000"}}


@bp.get("/bus/dead-letters")
def dead_letters() -> ResponseReturnValue:
    """Messages given up on, newest first (``?limit=``, default 100)."""
    authenticate(owner_only=True)
    args = request.args
    problems = query_problems(DEAD_LETTER_QUERY, {name: args[name] for name in args})
    if problems:
        fail(400, "invalid query", problems)
    limit = args.get("limit", "100")
    rows = get_db().execute("SELECT * FROM dead_letters ORDER BY seq DESC LIMIT ?",
                            (int(limit),)).fetchall()
    letters: list[dict[str, Any]] = [
        {"seq": row["seq"], "id": row["id"], "to": row["recipient"],
         "message": json.loads(row["body"]),
         "attempts": row["attempts"], "reason": row["reason"], "last_error": row["last_error"],
         "created_at": row["created_at"], "dead_at": row["dead_at"]}
        for row in rows
    ]
    return jsonify({"agent": me(), "dead_letters": letters})


REDRIVE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "properties": {"seqs": {
        "type": ["array", "null"], "maxItems": 1000, "items": {
            "type": "integer", "minimum": 1, "maximum": 2**63 - 1},
        "description": "a list of at most 1000 dead-letter seqs (all when null or absent)"}},
}


@bp.post("/bus/dead-letters/redrive")
def redrive_dead_letters() -> ResponseReturnValue:
    """Queue dead letters again (``{"seqs": [...]}``, or all): fresh attempts from now. Once
    per signature: a replay is 409 (:mod:`bus.replay`), so it moves no letter that died
    since."""
    signer = authenticate(owner_only=True)
    body = json_body()
    problems = fields_problems(REDRIVE_SCHEMA, body)
    if problems:
        fail(400, "invalid redrive", problems)
    given = body.get("seqs")
    seqs = None if given is None else [int(seq) for seq in given]
    request_id = signature_id()

    def once(db: sqlite3.Connection) -> list[tuple[str, str]]:
        replay.prune(db)
        replay.claim(db, signer, request_id)
        return redrive(db, seqs)

    try:
        moved = write(once)
    except replay.ReplayError as exc:
        fail(409, str(exc), hint=exc.hint)
    worker = state().worker
    if moved and worker is not None:
        worker.wake()
    return jsonify({"agent": me(), "redriven": [{"id": id_, "to": to} for id_, to in moved]})


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus text exposition of :func:`bus_stats`, labelled with the agent, and of
    :func:`delivery_by_region` (a summary per recipient region)."""
    lines = []
    for name, value in bus_stats(get_db()).items():
        kind = "counter" if name in COUNTERS else "gauge"
        metric = f"fleet_bus_{name}_total" if kind == "counter" else f"fleet_bus_{name}"
        lines += [f"# HELP {metric} {HELP[name]}", f"# TYPE {metric} {kind}",
                  f'{metric}{{agent="{me()}"}} {value}']
    regions = delivery_by_region(get_db())
    if regions:
        metric = "fleet_bus_delivery_seconds"
        lines += [f"# HELP {metric} Time from queued to stored by the recipient, by the "
                  "recipient's region.", f"# TYPE {metric} summary"]
        for region, entry in regions.items():
            labels = f'agent="{me()}",region="{region}"'
            lines += [f"{metric}_sum{{{labels}}} {entry['latency_ms_sum'] / 1000:.3f}",
                      f"{metric}_count{{{labels}}} {int(entry['delivered'])}"]
    return Response("\n".join(lines) + "\n",
                    content_type="text/plain; version=0.0.4; charset=utf-8")
