"""Mapping between bus messages and CloudEvents 1.0 structured events.

=====================  ==========================================
CloudEvents attribute  bus message field
=====================  ==========================================
``id``                 ``id``
``source``             ``from`` (the sending agent's name)
``type``               ``fleet.<type>`` (``fleet.request``, ...)
``time``               ``timestamp`` (receive time when absent)
``data``               ``payload``
``to`` (extension)     ``to``
``correlationid``      ``correlation_id``
``replyto``            ``reply_to``
``ttl``                ``ttl``
=====================  ==========================================
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from bus.schema import MAX_BATCH, TYPES, message_schema

CONTENT_TYPE = "application/cloudevents+json"
SPECVERSION = "1.0"
TYPE_PREFIX = "fleet."
# CloudEvents attribute -> message field
ATTRIBUTES = {
    "id": "id", "source": "from", "type": "type", "time": "timestamp", "data": "payload",
    "to": "to", "correlationid": "correlation_id", "replyto": "reply_to", "ttl": "ttl",
}
FIELDS = {field: attribute for attribute, field in ATTRIBUTES.items()}
IGNORED = ("specversion", "datacontenttype", "subject", "dataschema")


def cloudevent_schema(agents: Collection[str], me: str) -> dict[str, Any]:
    """The JSON Schema of a structured event for agent ``me``: :func:`bus.schema.message_schema`
    with its fields renamed to their attributes (``time`` and ``data`` optional)."""
    message = message_schema(agents, me)
    properties: dict[str, Any] = {}
    for field, rule in message["properties"].items():
        properties[FIELDS[field]] = rule
    properties["type"] = {"enum": [f"{TYPE_PREFIX}{kind}" for kind in TYPES],
                          "description": f"{TYPE_PREFIX}<type> (e.g. fleet.request)"}
    properties["specversion"] = {"const": SPECVERSION, "description": repr(SPECVERSION)}
    properties["datacontenttype"] = {"type": "string", "pattern": "^application/json",
                                     "description": "application/json"}
    properties.update({name: {"type": "string", "description": "any text (ignored)"}
                       for name in ("subject", "dataschema")})
    required = [FIELDS[field] for field in message["required"]
                if field not in ("timestamp", "payload")]
    return {"type": "object", "required": [*required, "specversion"],
            "additionalProperties": False, "properties": properties, "allOf": [{
                "if": {"properties": {"type": {"const": f"{TYPE_PREFIX}response"}},
                       "required": ["type"]},
                "then": {"required": ["correlationid"],
                         "properties": {"correlationid": {"type": "string"}},
                         "description": "a response needs the correlationid of its request"}}]}


def batch_schema() -> dict[str, Any]:
    """A CloudEvents JSON batch: an array of 1 to :data:`MAX_BATCH` events, each checked on
    its own."""
    return {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
            "items": {"description": "a structured event; checked one by one"}}


def from_cloudevent(event: object) -> tuple[dict[str, Any], dict[str, str]]:
    """The bus message an event stands for, and problems named by CloudEvents attribute."""
    if not isinstance(event, dict):
        return {}, {"body": "must be a CloudEvents structured event (a JSON object)"}
    problems: dict[str, str] = {}
    if event.get("specversion") != SPECVERSION:
        problems["specversion"] = f"{event.get('specversion')!r} is not {SPECVERSION!r}"
    content_type = event.get("datacontenttype", "application/json")
    if not str(content_type).startswith("application/json"):
        problems["datacontenttype"] = f"{content_type!r} is not application/json"
    message: dict[str, Any] = {}
    for attribute, value in event.items():
        if attribute in ATTRIBUTES:
            message[ATTRIBUTES[attribute]] = value
        elif attribute not in IGNORED:
            message[attribute] = value  # reported as an unknown field
    kind = event.get("type")
    if isinstance(kind, str) and kind.startswith(TYPE_PREFIX):
        message["type"] = kind[len(TYPE_PREFIX):]
    elif "type" in event:
        problems["type"] = f"{kind!r} is not {TYPE_PREFIX}<type> (e.g. fleet.request)"
    message.setdefault("payload", None)
    message.setdefault("timestamp", datetime.now(UTC).isoformat())
    return message, problems


def attribute_problems(problems: dict[str, str]) -> dict[str, str]:
    """Rename message-field problems to the CloudEvents attributes they came from."""
    return {FIELDS.get(name, name): problem for name, problem in problems.items()}


def to_cloudevent(message: dict[str, Any]) -> dict[str, Any]:
    """A message as a CloudEvents structured event (optional fields only when set)."""
    event: dict[str, Any] = {"specversion": SPECVERSION, "datacontenttype": "application/json"}
    for field, attribute in FIELDS.items():
        value = message.get(field)
        if value is not None or field == "payload":
            event[attribute] = f"{TYPE_PREFIX}{value}" if field == "type" else value
    return event
