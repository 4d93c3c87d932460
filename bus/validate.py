"""Validation of bus messages: one clear message per bad field, nothing raised.

A message is a JSON object ``{id, from, to, type, payload, timestamp}`` with optional
``correlation_id``, ``reply_to`` and ``ttl`` (seconds).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

TYPES = ("request", "response", "broadcast", "alert")
REQUIRED = ("id", "from", "to", "type", "payload", "timestamp")
OPTIONAL = ("correlation_id", "reply_to", "ttl")
MAX_ID = 200


def parse_timestamp(value: object) -> datetime | None:
    """An ISO 8601 timestamp with a UTC offset (``2026-11-28T01:02:03Z``), else None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def field_problem(name: str, value: Any, agents: Collection[str]) -> str | None:
    """What is wrong with one field's value, or None."""
    if name in ("id", "correlation_id"):
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
            return f"{value!r} is not a non-empty string of at most {MAX_ID} characters"
    elif name in ("from", "reply_to") or (name == "to" and value != "*"):
        if not isinstance(value, str) or value not in agents:
            return f"{value!r} is not an agent in the registry (agents: {', '.join(agents)})"
    elif name == "type":
        if value not in TYPES:
            return f"{value!r} is not a message type ({', '.join(TYPES)})"
    elif name == "timestamp":
        if parse_timestamp(value) is None:
            return (f"{value!r} is not an ISO 8601 timestamp with a UTC offset "
                    "(e.g. 2026-11-28T01:02:03Z)")
    elif name == "ttl" and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        return f"{value!r} is not a positive whole number of seconds"
    return None


def fields_problems(data: object, required: tuple[str, ...], allowed: tuple[str, ...],
                    agents: Collection[str]) -> dict[str, str]:
    """Problems of a JSON object by field name: missing, unknown and bad fields."""
    if not isinstance(data, dict):
        return {"body": f"must be a JSON object with fields {', '.join(required)}"}
    problems = {name: "missing required field" for name in required if name not in data}
    for name, value in data.items():
        if name not in allowed:
            problems[name] = f"unknown field (allowed: {', '.join(allowed)})"
        elif name != "payload" and (value is not None or name in required):
            problem = field_problem(name, value, agents)
            if problem:
                problems[name] = problem
    if data.get("type") == "response" and not data.get("correlation_id"):
        problems.setdefault("correlation_id", "a response needs the correlation_id of its "
                                              "request")
    return problems


def message_problems(data: object, agents: Collection[str], me: str) -> dict[str, str]:
    """Problems of a message received by agent ``me``; empty when it may be stored."""
    problems = fields_problems(data, REQUIRED, REQUIRED + OPTIONAL, agents)
    if isinstance(data, dict) and "to" not in problems:
        if data["to"] == "*":
            problems["to"] = f"'*' is not an agent; a broadcast is sent to each agent as {me!r}"
        elif data["to"] != me:
            problems["to"] = f"{data['to']!r} is not this agent (this gateway serves {me!r})"
    return problems
