"""``GET /openapi.json``: the OpenAPI 3.1 description of the gateway's endpoints.

Bus endpoints are described in full; routes other blueprints mount on the same gateway
(health, agent card) are listed from the URL map with their view's docstring.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from bus.cloudevents import CONTENT_TYPE as CLOUDEVENTS
from bus.signing import AGENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from bus.validate import TYPES
from bus.web import me

bp = Blueprint("bus_openapi", __name__)
IMPLICIT = ("HEAD", "OPTIONS")
SIGNED: list[dict[str, list[str]]] = [{"agent": [], "timestamp": [], "signature": []}]
ERROR = {"description": "JSON error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}
MESSAGE = {
    "type": "object",
    "required": ["id", "from", "to", "type", "payload", "timestamp"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "maxLength": 200, "description": "sender's idempotency key"},
        "from": {"type": "string", "description": "sending agent (must sign the request)"},
        "to": {"type": "string", "description": "receiving agent (this gateway's)"},
        "type": {"enum": list(TYPES)},
        "payload": {},
        "timestamp": {"type": "string", "format": "date-time"},
        "correlation_id": {"type": ["string", "null"]},
        "reply_to": {"type": ["string", "null"]},
        "ttl": {"type": ["integer", "null"], "minimum": 1, "description": "seconds"},
    },
}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _op(summary: str, responses: dict[str, Any], signed: bool = True,
        **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if signed:
        operation["security"] = SIGNED
        responses.setdefault("401", ERROR)
    return operation


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in names]


def document() -> dict[str, Any]:
    """The OpenAPI document (paths use OpenAPI ``{param}`` syntax); needs an app context."""
    message_body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Message"}},
        CLOUDEVENTS: {"schema": {"type": "object", "description": "CloudEvents 1.0 structured "
                                 "event: id, source=from, type=fleet.<type>, time, data, to"}}}}
    paths = {
        "/message": {"post": _op("Receive a message durably", {
            "201": _json("stored"), "200": _json("duplicate, stored before"), "400": ERROR,
            "413": ERROR, "415": ERROR}, requestBody=message_body)},
        "/messages/batch": {"post": _op("Receive up to 500 messages in one transaction", {
            "200": _json("one result per message: stored, duplicate or invalid + problems"),
            "400": ERROR, "413": ERROR, "415": ERROR}, requestBody={"required": True, "content": {
                "application/json": {"schema": {"type": "object", "required": ["messages"],
                                                "properties": {"messages": {
                                                    "type": "array", "maxItems": 500, "items": {
                                                        "$ref": "#/components/schemas/Message"}}}}},
                "application/cloudevents-batch+json": {"schema": {"type": "array"}}}})},
        "/messages": {"get": _op("List inbox messages (owner-signed)", {
            "200": _json("messages and next cursor"), "400": ERROR, "403": ERROR},
            parameters=_query("since", "type", "limit", "correlation_id", "from", "unacked"))},
        "/messages/{message_id}/ack": {"post": _op("Acknowledge a message (owner-signed)", {
            "200": _json("acknowledged"), "403": ERROR, "404": ERROR},
            parameters=[{"name": "message_id", "in": "path", "required": True,
                         "schema": {"type": "string"}}, *_query("from")])},
        "/outbox": {"post": _op("Queue a message from this agent (owner-signed)", {
            "202": _json("queued: id and recipients"), "400": ERROR, "403": ERROR,
            "413": ERROR}, requestBody={"required": True, "content": {"application/json": {
                "schema": {"type": "object", "required": ["type", "payload"]}}}})},
        "/bus/stats": {"get": _op("Bus counters and table sizes (owner-signed)", {
            "200": _json("stats"), "403": ERROR})},
        "/bus/dead-letters": {"get": _op("Messages given up on (owner-signed)", {
            "200": _json("dead letters"), "400": ERROR, "403": ERROR},
            parameters=_query("limit"))},
        "/metrics": {"get": _op("Prometheus metrics (public)", {"200": {
            "description": "Prometheus text", "content": {"text/plain": {}}}}, signed=False)},
        "/openapi.json": {"get": _op("This document (public)", {"200": _json("OpenAPI")},
                                     signed=False)},
    }
    for rule in current_app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if rule.endpoint == "static" or path in paths:
            continue
        view = current_app.view_functions[rule.endpoint]
        summary = (view.__doc__ or rule.endpoint).strip().splitlines()[0]
        paths[path] = {method.lower(): _op(summary, {"200": _json("see the summary")},
                                           signed=False)
                       for method in sorted(rule.methods or ()) if method not in IMPLICIT}
    header = {"type": "apiKey", "in": "header"}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Sovereign Fleet bus of {me()}", "version": "1.0"},
        "paths": paths,
        "components": {
            "schemas": {"Message": MESSAGE, "Error": {"type": "object", "required": ["error"],
                        "properties": {"error": {"type": "string"}, "problems": {
                            "type": "object", "additionalProperties": {"type": "string"}},
                            "hint": {"type": "string"}}}},
            "securitySchemes": {
                "agent": {**header, "name": AGENT_HEADER},
                "timestamp": {**header, "name": TIMESTAMP_HEADER},
                "signature": {**header, "name": SIGNATURE_HEADER, "description":
                              "sha256=HMAC-SHA256(key, ts\\nMETHOD\\npath\\nquery\\n + body)"},
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """Serve :func:`document`."""
    return jsonify(document())
