"""The bus's message schemas: one JSON Schema per body, used both to validate requests and to
describe them in ``/openapi.json`` (so the two cannot disagree).

Each property's ``description`` is the rule a value must meet, phrased so that a problem
reads ``'<value>' is not <description>``. The schemas use a small subset of JSON Schema
2020-12, checked by :func:`schema_problems`: ``type``, ``enum``, ``const``, ``minLength``,
``maxLength``, ``pattern``, ``minimum``, ``maximum``, ``format: date-time``, ``required``,
``properties`` (nested objects too: their problems are named ``outer.inner``),
``additionalProperties`` (``false``, or a schema for the values with ``propertyNames``),
``minItems``/``maxItems``/``items`` and ``allOf`` of ``if``/``then``/``else`` (a branch may
hold ``required``, ``properties`` or ``not: {required}``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

from bus.timestamps import parse_timestamp

TYPES = ("request", "response", "broadcast", "alert", "work.item", "work.event", "work.outcome")
"""Message types; the ``work.*`` ones carry autonomous work between the orchestrator and a
worker (:mod:`fleet.node.work.messages`)."""
MAX_ID = 200
MAX_TTL = 365 * 86400  # one year, in seconds
MAX_BATCH = 500
WHOLE = re.compile(r"[0-9]{1,19}")  # ASCII digits only: '²'.isdigit() is True
BIGGEST = 2**63 - 1  # SQLite's INTEGER
ID_RULE = f"a non-empty string of at most {MAX_ID} characters"


def _id(nullable: bool = False) -> dict[str, Any]:
    kind: Any = ["string", "null"] if nullable else "string"
    # some character that is not white space, by both regex dialects: Python's \s takes the
    # separators U+001C-U+001F, the ECMA-262 one of JSON Schema (and of fuzzers) does not
    return {"type": kind, "minLength": 1, "maxLength": MAX_ID,
            "pattern": "[^\\s\\x1c-\\x1f]", "description": ID_RULE}


def _agent(agents: Collection[str], nullable: bool = False, star: bool = False) -> dict[str, Any]:
    names: list[Any] = [*agents, *(["*"] if star else []), *([None] if nullable else [])]
    return {"enum": names,
            "description": f"an agent in the registry (agents: {', '.join(agents)})"}


FIELDS_COMMON: dict[str, Any] = {
    "type": {"enum": list(TYPES), "description": f"a message type ({', '.join(TYPES)})"},
    "payload": {"description": "any JSON value (no NaN or Infinity, nested at most 32 deep)"},
}
TTL = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TTL,
       "description": f"a whole number of seconds from 1 to {MAX_TTL}"}
RESPONSE_NEEDS_CORRELATION: dict[str, Any] = {
    "if": {"properties": {"type": {"const": "response"}}, "required": ["type"]},
    "then": {"required": ["correlation_id"],
             "properties": {"correlation_id": {"type": "string"}},
             "description": "a response needs the correlation_id of its request"},
}


def message_schema(agents: Collection[str], me: str) -> dict[str, Any]:
    """A message received by agent ``me`` (``POST /message``, items of a batch)."""
    return {
        "type": "object",
        "required": ["id", "from", "to", "type", "payload", "timestamp"],
        "additionalProperties": False,
        "properties": {
            "id": _id(),
            "from": _agent(agents),
            "to": {"const": me, "description": f"this agent (this gateway serves {me!r})"},
            **FIELDS_COMMON,
            "timestamp": {"type": "string", "format": "date-time", "description":
                          "an ISO 8601 timestamp with a UTC offset (e.g. 2026-11-28T01:02:03Z)"},
            "correlation_id": _id(nullable=True),
            "reply_to": _agent(agents, nullable=True),
            "ttl": TTL,
        },
        "allOf": [RESPONSE_NEEDS_CORRELATION],
    }


def batch_schema() -> dict[str, Any]:
    """``{"messages": [message, ...]}`` (1 to :data:`MAX_BATCH` items). Each item is checked
    on its own (against :func:`message_schema`): an invalid one is answered with its
    problems while the others are stored, so the batch schema does not constrain items."""
    return {"type": "object", "required": ["messages"], "additionalProperties": False,
            "properties": {"messages": {
                "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                "items": {"description": "a message (see Message); checked one by one"},
                "description": f"a JSON array of 1 to {MAX_BATCH} messages"}}}


def send_schema(agents: Collection[str]) -> dict[str, Any]:
    """A message to queue (``POST /outbox``, :func:`bus.send`): ``from`` and ``timestamp``
    are filled in; ``id`` is the sender's idempotency key (chosen for it when absent)."""
    return {
        "type": "object",
        "required": ["type", "payload"],
        "additionalProperties": False,
        "properties": {
            "id": _id(nullable=True),
            "to": _agent(agents, nullable=True, star=True),
            **FIELDS_COMMON,
            "correlation_id": _id(nullable=True),
            "reply_to": _agent(agents, nullable=True),
            "ttl": TTL,
        },
        "allOf": [RESPONSE_NEEDS_CORRELATION, {
            "if": {"properties": {"type": {"const": "broadcast"}}, "required": ["type"]},
            "else": {"required": ["to"], "properties": {"to": {"enum": list(agents)}},
                     "description": "a message that is not a broadcast needs one recipient (an "
                                    "agent); only a broadcast goes to '*'"}}],
    }


A2A_METHODS = ("SendMessage", "message/send")  # A2A 1.0, and 0.3 for older clients
A2A_ROLES = ("ROLE_USER", "ROLE_AGENT", "user", "agent")
OBJECT = {"type": "object", "description": "a JSON object"}


def a2a_schema() -> dict[str, Any]:
    """An A2A JSON-RPC ``SendMessage`` (or 0.3 ``message/send``) request (``POST /a2a``): the
    message is kept whole as the payload of an inbox message from the signing agent."""
    message = {
        "type": "object", "required": ["messageId", "role", "parts"],
        "additionalProperties": False,
        "description": "an A2A Message (messageId, role, parts)",
        "properties": {
            "messageId": _id(),
            "role": {"enum": list(A2A_ROLES),
                     "description": f"an A2A role ({', '.join(A2A_ROLES)})"},
            "parts": {"type": "array", "minItems": 1, "maxItems": 100, "items": OBJECT,
                      "description": "a JSON array of 1 to 100 parts (objects)"},
            "kind": {"const": "message", "description": "'message'"},
            "contextId": _id(),
            "taskId": _id(),
            "metadata": OBJECT,
            "extensions": {"type": "array", "items": {"type": "string", "description": "a URI"},
                           "description": "a JSON array of extension URIs"},
            "referenceTaskIds": {"type": "array", "items": _id(),
                                 "description": "a JSON array of task ids"},
        },
    }
    return {
        "type": "object", "required": ["jsonrpc", "id", "method", "params"],
        "additionalProperties": False,
        "properties": {
            "jsonrpc": {"const": "2.0", "description": "'2.0'"},
            "id": {"type": ["string", "integer"], "maxLength": MAX_ID,
                   "description": f"a JSON-RPC id (a string of at most {MAX_ID} characters, "
                                  "or an integer)"},
            "method": {"enum": list(A2A_METHODS),
                       "description": f"an A2A method served here ({', '.join(A2A_METHODS)})"},
            "params": {
                "type": "object", "required": ["message"], "additionalProperties": False,
                "description": "A2A SendMessageRequest params (message, configuration, ...)",
                "properties": {"message": message, "configuration": OBJECT,
                               "metadata": OBJECT,
                               "tenant": {"type": "string", "description": "a tenant name"}}},
        },
    }


def query_problems(schema: Mapping[str, Any], args: Mapping[str, str]) -> dict[str, str]:
    """Problems of query parameters ``args`` by name against ``schema`` (parameter name ->
    schema: ``integer`` in ASCII digits, ``enum``, ``string``); unknown ones too."""
    problems: dict[str, str] = {}
    for name, text in args.items():
        rule = schema.get(name)
        if rule is None:
            problems[name] = "unknown parameter"
            continue
        if rule.get("type") == "integer":
            ok = WHOLE.fullmatch(text) is not None and value_ok(rule, int(text))
        else:
            ok = value_ok(rule, text)
        if not ok:
            problems[name] = f"{text!r} is not {rule['description']}"
    return problems


def _is_integer(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())


TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
}


def value_ok(schema: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` meets a property schema (the keywords listed in the module doc)."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(TYPE_CHECKS[kind](value) for kind in kinds):
            return False
    if "enum" in schema and not any(value == v and type(value) is type(v)
                                    for v in schema["enum"]):
        return False
    if "const" in schema and not (value == schema["const"] and type(value) is type(
            schema["const"])):
        return False
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
        if schema.get("format") == "date-time" and parse_timestamp(value) is None:
            return False
    if isinstance(value, dict) and "properties" in schema and schema_problems(schema, value):
        return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        if "items" in schema and not all(value_ok(schema["items"], item) for item in value):
            return False
    return not _is_integer(value) or bool(
        schema.get("minimum", value) <= value <= schema.get("maximum", value))


def schema_problems(schema: Mapping[str, Any], data: Any) -> dict[str, str]:
    """Problems of a JSON object by field name (missing, unknown, bad); empty if valid."""
    properties: Mapping[str, Any] = schema.get("properties", {})
    if not isinstance(data, dict):
        fields = ", ".join(schema.get("required") or properties)
        return {"body": f"must be a JSON object with fields {fields}"}
    problems = {name: "missing required field" for name in schema.get("required", ())
                if name not in data}
    extra = schema.get("additionalProperties", True)
    for name, value in data.items():
        if name not in properties:
            if extra is False:
                problems[str(name)] = f"unknown field (allowed: {', '.join(properties)})"
            elif isinstance(extra, dict):
                names = schema.get("propertyNames", {})
                if not value_ok(names, name):
                    problems[str(name)] = f"unknown field, and not {names['description']}"
                elif not value_ok(extra, value):
                    problems[name] = f"{value!r} is not {extra['description']}"
        elif isinstance(value, dict) and "properties" in properties[name]:
            problems.update({f"{name}.{inner}": problem for inner, problem
                             in schema_problems(properties[name], value).items()})
        elif not value_ok(properties[name], value):
            problems[name] = f"{value!r} is not {properties[name]['description']}"
    for rule in schema.get("allOf", ()):
        condition = rule["if"]
        holds = all(name in data for name in condition.get("required", ())) and all(
            name not in data or value_ok(sub, data[name])
            for name, sub in condition.get("properties", {}).items())
        branch = rule.get("then" if holds else "else")
        if branch is None:
            continue
        excluded = branch.get("not", {}).get("required", [])
        if excluded and all(name in data for name in excluded):
            problems.setdefault(excluded[0], branch["description"])
        for name in branch.get("required", ()):
            sub = branch.get("properties", {}).get(name, {})
            if name not in problems and (name not in data or not value_ok(sub, data[name])):
                problems[name] = branch["description"]
    return problems
