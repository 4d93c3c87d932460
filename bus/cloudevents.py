"""Mapping between bus messages and CloudEvents 1.0 (structured and binary HTTP modes).

=====================  ==========================================
CloudEvents attribute  bus message field
=====================  ==========================================
``id``                 ``id``
``source``             ``from``: the agent's name, or a URI reference ending in ``/<agent>``
                       (``/agents/ezra``, kept as sent)
``type``               ``fleet.<type>`` (``fleet.request``, ...)
``time``               ``timestamp`` (receive time when absent)
``data``               ``payload`` (or ``data_base64``, kept as sent; payload ``null``)
``to`` (extension)     ``to``
``correlationid``      ``correlation_id``
``replyto``            ``reply_to``
``ttl``                ``ttl``
=====================  ==========================================

Every other attribute (``subject``, ``datacontenttype``, ``dataschema``, ``traceparent``,
``tracestate``, any extension) is kept in the message's ``attributes`` and given back when the
inbox is read as CloudEvents (:func:`to_cloudevent`; the ``seq`` extension is the inbox
position). In binary mode (``ce-*`` headers, the body is the data) the event is rebuilt by
:func:`from_binary` and checked by the same schema as a structured one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from bus.schema import MAX_BATCH, TYPES, WHOLE, message_schema
from bus.timestamps import utc_timestamp
from bus.validate import fields_problems, parse_json, value_problem

CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
TYPE_PREFIX = "fleet."
HEADER_PREFIX = "ce-"
SEQ = "seq"  # extension: the event's inbox position, in events read from the inbox
# CloudEvents attribute -> message field
ATTRIBUTES = {
    "id": "id", "source": "from", "type": "type", "time": "timestamp", "data": "payload",
    "to": "to", "correlationid": "correlation_id", "replyto": "reply_to", "ttl": "ttl",
}
FIELDS = {field: attribute for attribute, field in ATTRIBUTES.items()}
JSON_MEDIA = re.compile(r"^(application|text)/([a-zA-Z0-9.+-]+\+)?json(;.*)?$")
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
INT32 = 2**31
MAX_BASE64 = 200_000  # characters: 150,000 bytes of data, so an event fits the body limit


def _text(description: str, max_length: int = 1000, **rule: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **rule, "description": description}


def cloudevent_schema(agents: Collection[str], me: str) -> dict[str, Any]:
    """The JSON Schema of an event for agent ``me``: :func:`bus.schema.message_schema` with its
    fields renamed to their attributes (``time`` and ``data`` optional), the optional context
    attributes, ``data_base64`` and extensions (lowercase letters and digits)."""
    message = message_schema(agents, me)
    properties: dict[str, Any] = {}
    for field, rule in message["properties"].items():
        properties[FIELDS[field]] = rule
    names = "|".join(re.escape(agent) for agent in agents)
    properties["source"] = _text(
        f"an agent in the registry, or a URI reference ending in /<agent> such as /agents/"
        f"{me} (agents: {', '.join(agents)})", pattern=f"^(?:[^\\s\\x1c-\\x1f]*/)?(?:{names})$")
    properties["type"] = {"enum": [f"{TYPE_PREFIX}{kind}" for kind in TYPES],
                          "description": f"{TYPE_PREFIX}<type> (e.g. fleet.request)"}
    properties["specversion"] = {"const": SPECVERSION, "description": repr(SPECVERSION)}
    properties.update({
        "data_base64": _text(f"base64 data (RFC 4648, padded) of at most {MAX_BASE64} "
                             "characters", MAX_BASE64, pattern=BASE64),
        "datacontenttype": _text("a media type (e.g. application/json)", 200,
                                 pattern=r"^[\w.+-]+/[\w.+-]+"),
        "dataschema": _text("a URI", minLength=1),
        "subject": _text("a subject of at most 1000 characters"),
        "traceparent": _text("a W3C traceparent (e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-"
                             "00f067aa0ba902b7-01)", pattern=TRACEPARENT),
        "tracestate": _text("a W3C tracestate of at most 512 characters", 512),
    })
    required = [FIELDS[field] for field in message["required"]
                if field not in ("timestamp", "payload")]
    return {
        "type": "object", "required": [*required, "specversion"], "properties": properties,
        "additionalProperties": {
            "type": ["string", "integer", "boolean"], "maxLength": 1000,
            "minimum": -INT32, "maximum": INT32 - 1,
            "description": "an extension value (text of at most 1000 characters, a 32-bit "
                           "integer or a boolean)"},
        "propertyNames": {"pattern": "^[a-z0-9]{1,20}$", "description":
                          "an extension attribute (1 to 20 lowercase letters and digits)"},
        "allOf": [{
            "if": {"properties": {"type": {"const": f"{TYPE_PREFIX}response"}},
                   "required": ["type"]},
            "then": {"required": ["correlationid"],
                     "properties": {"correlationid": {"type": "string"}},
                     "description": "a response needs the correlationid of its request"}}, {
            "if": {"required": ["data_base64"]},
            "then": {"not": {"required": ["data_base64", "data"]},
                     "description": "an event has data or data_base64, not both"}}]}


def batch_schema() -> dict[str, Any]:
    """A CloudEvents JSON batch: an array of 1 to :data:`MAX_BATCH` events, each checked on
    its own."""
    return {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
            "items": {"description": "a structured event; checked one by one"}}


def sender(source: str) -> str:
    """The agent a valid ``source`` names: itself, or the last segment of its URI path."""
    return source.rsplit("/", 1)[-1]


def from_cloudevent(event: Mapping[str, Any]) -> dict[str, Any]:
    """The bus message a valid event stands for; attributes that are no message field are in
    its ``attributes`` (``source`` too when it is a URI), a ``data_base64`` beside them."""
    message: dict[str, Any] = {"payload": None, "timestamp": utc_timestamp()}
    attributes: dict[str, Any] = {}
    for attribute, value in event.items():
        if attribute in ATTRIBUTES:
            message[ATTRIBUTES[attribute]] = value
        elif attribute not in ("specversion", "data_base64"):
            attributes[attribute] = value
    message["type"] = event["type"][len(TYPE_PREFIX):]
    message["from"] = sender(event["source"])
    if event["source"] != message["from"]:
        attributes["source"] = event["source"]
    if attributes.get("datacontenttype") == "application/json":
        del attributes["datacontenttype"]
    if "data_base64" in event:
        message["data_base64"] = event["data_base64"]
    if attributes:
        message["attributes"] = attributes
    return message


def event_problems(event: object, agents: Collection[str], me: str) -> dict[str, str]:
    """Problems of an event by attribute (:func:`cloudevent_schema`); ``data`` may nest as
    deep as a message's payload."""
    if isinstance(event, dict) and "data" in event:
        problem = value_problem(event["data"])
        if problem:
            return {"data": problem}
        event = {**event, "data": None}
    return fields_problems(cloudevent_schema(agents, me), event)


def from_binary(headers: Iterable[tuple[str, str]], content_type: str | None,
                body: bytes) -> dict[str, Any]:
    """The structured event a binary-mode request stands for: ``ce-*`` headers (percent-
    decoded; ``ce-ttl`` in digits as a number), ``Content-Type`` as ``datacontenttype``, the
    body as ``data`` when its type is JSON (:class:`bus.validate.JSONError` if it is not
    valid JSON), else as ``data_base64``."""
    event: dict[str, Any] = {}
    for name, value in headers:
        if name.lower().startswith(HEADER_PREFIX):
            attribute = name.lower()[len(HEADER_PREFIX):]
            text = unquote(value)
            event[attribute] = int(text) if attribute == "ttl" and WHOLE.fullmatch(
                text) else text
    if content_type:
        event["datacontenttype"] = content_type
    if body and JSON_MEDIA.match(content_type or "application/json"):
        event["data"] = parse_json(body)
    elif body:  # over MAX_BASE64 in base64: refused by the schema (body)
        event["data_base64"] = base64.b64encode(body).decode("ascii")
    return event


def binary_names(problems: Mapping[str, str]) -> dict[str, str]:
    """Problems of a binary-mode event named where the sender put them: ``ce-<attribute>``,
    ``Content-Type`` or ``body``."""
    where = {"data": "body", "data_base64": "body", "datacontenttype": "Content-Type"}
    return {where.get(name, f"{HEADER_PREFIX}{name}"): problem
            for name, problem in problems.items()}


def to_cloudevent(message: Mapping[str, Any]) -> dict[str, Any]:
    """A message as a CloudEvents structured event (optional fields only when set): the
    attributes it was received with, and its inbox position as the ``seq`` extension."""
    event: dict[str, Any] = {"specversion": SPECVERSION, "datacontenttype": "application/json"}
    for field, attribute in FIELDS.items():
        value = message.get(field)
        if value is not None or (field == "payload" and "data_base64" not in message):
            event[attribute] = f"{TYPE_PREFIX}{value}" if field == "type" else value
    event.update(message.get("attributes") or {})
    if "data_base64" in message:
        event["data_base64"] = message["data_base64"]
    if message.get("seq") is not None:
        event[SEQ] = message["seq"]
    return event
