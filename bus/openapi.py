"""``GET /openapi.json``: the OpenAPI 3.1 description of the gateway's endpoints.

Bus request bodies are described by the very schemas the endpoints validate with
(:mod:`bus.schema`, built for this gateway's registry and agent), so the document and the
server cannot disagree. Routes other blueprints mount on the same app (health, agent card)
are listed from the URL map with their view's docstring, and what the view documents itself
(:data:`OPENAPI_ATTRIBUTE`).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from bus import a2a, cloudevents, inbox, stats
from bus.cloudevents import CONTENT_TYPE as CLOUDEVENTS
from bus.cloudevents import cloudevent_schema
from bus.inbox import ACK_SCHEMA
from bus.schema import a2a_schema, batch_schema, message_schema, send_schema
from bus.signing import SECURITY, SECURITY_SCHEMES
from bus.state import state
from bus.stats import REDRIVE_SCHEMA

bp = Blueprint("bus_openapi", __name__)
IMPLICIT = ("HEAD", "OPTIONS")
OPENAPI_ATTRIBUTE = "openapi"
"""A route of another blueprint may set this attribute on its view: its OpenAPI operation's
``responses`` and ``parameters`` (default: 200 and the docstring's first line)."""
BINARY_MODE = ("Also a CloudEvents binary-mode request: ce-specversion, ce-id, ce-source, "
               "ce-type, ce-to and any other attribute as ce-* headers (checked as the "
               "application/cloudevents+json event is), Content-Type as datacontenttype, the "
               "body as the data (base64 in data_base64 unless its type is JSON).")
SIGNED: list[dict[str, list[str]]] = SECURITY
ERROR = {"description": "JSON error", "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _body(schema: dict[str, Any], **more: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}, **more}}


def _op(summary: str, responses: dict[str, Any], signed: bool = True, body: bool = False,
        **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if signed:
        operation["security"] = SIGNED
        responses.setdefault("401", ERROR)
    if body:
        responses.update({"400": ERROR, "413": ERROR, "415": ERROR})
    return operation


def _params(query: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query.items()]


def document() -> dict[str, Any]:
    """The OpenAPI document (paths use OpenAPI ``{param}`` syntax); needs an app context."""
    bus = state()
    agents = list(bus.agents)
    message = message_schema(agents, bus.agent)
    quota = {"description": "the sender's inbox quota is full", "headers": {"Retry-After": {
        "schema": {"type": "integer"}}}, "content": ERROR["content"]}
    owner = {"403": ERROR}
    paths = {
        "/message": {"post": _op("Receive a message durably", {
            "201": _json("stored"), "200": _json("duplicate, stored before"), "429": quota},
            body=True, description=BINARY_MODE,
            requestBody=_body({"$ref": "#/components/schemas/Message"}, **{
                CLOUDEVENTS: {"schema": cloudevent_schema(agents, bus.agent)}}))},
        "/messages/batch": {"post": _op("Receive up to 500 messages in one transaction", {
            "200": _json("one result per message: stored, duplicate, over_quota or invalid")},
            body=True, requestBody=_body(batch_schema(),
                                         **{"application/cloudevents-batch+json": {
                                             "schema": cloudevents.batch_schema()}}))},
        "/messages": {"get": _op("List inbox messages (owner-signed)", {
            "200": {"description": "messages and next cursor; by Accept, CloudEvents",
                    "content": {"application/json": {"schema": {"type": "object"}},
                                cloudevents.BATCH_CONTENT_TYPE: {"schema": {"type": "array"}},
                                CLOUDEVENTS: {"schema": {"type": "object"}}}},
            "204": {"description": "Accept: application/cloudevents+json and no message"},
            "400": ERROR, **owner}, parameters=_params(inbox.query_schema(bus.max_wait_ms)))},
        "/messages/ack": {"post": _op("Acknowledge a message by sender and id (owner-signed)", {
            "200": _json("acknowledged"), "404": ERROR, **owner}, body=True,
            requestBody=_body(ACK_SCHEMA))},
        "/outbox": {"post": _op("Queue a message from this agent (owner-signed)", {
            "202": _json("queued: id, recipients, status"),
            "200": _json("its id was sent before: nothing queued again"), **owner},
            body=True, requestBody=_body(send_schema(agents)))},
        "/bus/stats": {"get": _op("Bus counters and table sizes (owner-signed)", {
            "200": _json("stats"), **owner})},
        "/bus/dead-letters": {"get": _op("Messages given up on (owner-signed)", {
            "200": _json("dead letters"), "400": ERROR, **owner},
            parameters=_params(stats.DEAD_LETTER_QUERY))},
        "/bus/dead-letters/redrive": {"post": _op("Queue dead letters again (owner-signed)", {
            "200": _json("the re-queued messages"), **owner,
            "409": _json("a replay: this signed request was made before")}, body=True,
            requestBody=_body(REDRIVE_SCHEMA))},
        "/metrics": {"get": _op("Prometheus metrics (public)", {"200": {
            "description": "Prometheus text", "content": {"text/plain": {}}}}, signed=False)},
        "/openapi.json": {"get": _op("This document (public)", {"200": _json("OpenAPI")},
                                     signed=False)},
    }
    if "bus_a2a.send_message" in current_app.view_functions:  # mounted: bus.a2a.init_app
        send = _op("A2A JSON-RPC SendMessage into the inbox", {
            "200": _json("JSON-RPC result: an agent message with the outcome"), "429": quota},
            body=True, requestBody=_body(a2a_schema()))
        send["responses"]["400"] = _json("JSON-RPC error; data.problems names the fields")
        paths[a2a.PATH] = {"post": send}
    for rule in current_app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if rule.endpoint == "static" or path in paths:
            continue
        view = current_app.view_functions[rule.endpoint]
        summary = (view.__doc__ or rule.endpoint).strip().splitlines()[0]
        own = dict(getattr(view, OPENAPI_ATTRIBUTE, {}))  # what the view documents itself
        paths[path] = {method.lower(): _op(summary, own.pop("responses", {
            "200": _json("see the summary")}), signed=False, **own)
                       for method in sorted(rule.methods or ()) if method not in IMPLICIT}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Sovereign Fleet bus of {bus.agent}", "version": "2.0",
                 "description": f"Every request body is at most {bus.max_body} bytes (413). "
                                "JSON bodies may not contain NaN/Infinity or lone surrogates, "
                                "nor nest deeper than 32 levels (400)."},
        "paths": paths,
        "components": {
            "schemas": {"Message": message, "Error": {"type": "object", "required": ["error"],
                        "properties": {"error": {"type": "string"}, "problems": {
                            "type": "object", "additionalProperties": {"type": "string"}},
                            "hint": {"type": "string"}}}},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """Serve :func:`document`."""
    return jsonify(document())
