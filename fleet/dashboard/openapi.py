"""``GET /openapi.json`` of ``fleet dashboard``: the OpenAPI 3.1 document of every route the
dashboard app serves (public, no secrets). The app has no auth of its own (it listens on the
loopback by default); on the receiver the same routes sit behind its read token, and the
receiver's own ``/openapi.json`` describes them there."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from fleet import __version__
from fleet.control.records import RUN_ID_RE
from fleet.core.serving import MAX_HEADER_FIELD_SIZE, MAX_HEADER_FIELDS, MAX_REQUEST_LINE
from fleet.dashboard.data import RUNS_SHOWN, WORK_SHOWN, WORK_STATES

bp = Blueprint("dashboard_openapi", __name__)

REF = "#/components/schemas/"
ERROR = {"$ref": REF + "Error"}
STRING: dict[str, Any] = {"type": "string"}
MAYBE_STRING: dict[str, Any] = {"type": ["string", "null"]}
STRINGS: dict[str, Any] = {"type": "array", "items": STRING}
PARTS = ["ok", "drift", "unknown"]


def _json_error(description: str) -> dict[str, Any]:
    """A documented ``{"error": ...}`` answer."""
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _text(content_type: str, description: str) -> dict[str, Any]:
    """A 200 answer of ``content_type`` text."""
    return {"description": description, "content": {content_type: {"schema": STRING}}}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with ``properties``, all required but ``optional``."""
    return {"type": "object", "properties": properties,
            "required": [name for name in properties if name not in optional]}


# what the app answers before any route (fleet.core.serving.RequestLimits, in front of the app)
LIMITS = {
    "414": _json_error(f"request line over {MAX_REQUEST_LINE} bytes"),
    "431": _json_error(f"over {MAX_HEADER_FIELDS} header fields, or one over "
                       f"{MAX_HEADER_FIELD_SIZE} bytes"),
}
RUN_ID = {"name": "run_id", "in": "path", "required": True,
          "description": "a run id as `fleet deploy` names its record (e.g. "
                         "`20261130T100000Z-3f9a1c`): 1-128 letters, digits, `.`, `_` or `-`, "
                         "starting with a letter or digit",
          "schema": {"type": "string", "minLength": 1, "maxLength": 128,
                     "pattern": f"^{RUN_ID_RE.pattern}$"},
          "example": "20261130T100000Z-3f9a1c"}
BAD_RUN_ID = _json_error("the run id is not 1-128 letters, digits, `.`, `_` or `-` starting "
                         "with a letter or digit")
NOT_FOUND = _json_error("no such path (e.g. a run id with a `/`)")


def _get(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A GET operation answering ``responses`` (and the request limits)."""
    return {"get": {"summary": summary, **extra, "responses": {**responses, **LIMITS}}}


HOST_RUN = _object({"name": STRING, "status": STRING, "release": MAYBE_STRING,
                    "changed": {**STRINGS, "description": "operations that changed something "
                                "(a dry run: that would)"},
                    "reason": STRING})
RUN_VIEW = _object({
    "run_id": STRING, "kind": STRING, "status": STRING, "dry": {"type": "boolean"},
    "release": MAYBE_STRING, "started": MAYBE_STRING, "finished": MAYBE_STRING,
    "hosts": {"type": "array", "items": {"$ref": "#/components/schemas/HostRun"}},
    "summary": STRING, "has_log": {"type": "boolean"}})
AGENT_VIEW = _object({
    "name": STRING, "role": STRING, "region": MAYBE_STRING, "host": STRING,
    "state": {"enum": ["ok", "drift", "down"]},
    "health": {**STRING, "description": "`ok`, or why the health check failed"},
    "release": MAYBE_STRING,
    "release_state": {"enum": PARTS, "description": "against the last deploy that went through"},
    "soul_state": {"enum": PARTS}, "config_state": {"enum": PARTS},
    "outbox_depth": {"type": ["integer", "null"], "minimum": 0},
    "dead_letters": {"type": ["integer", "null"], "minimum": 0},
    "last_seen": {**MAYBE_STRING, "description": "when this server last found it healthy"},
    "problems": STRINGS})
CHECK_VIEW = _object({"check_id": {"type": "integer"}, "status": STRING,
                      "started": MAYBE_STRING, "drifted": STRINGS, "summary": STRING,
                      "alert": STRING})
NUMBER = {"type": "number"}
RUN_BAR = _object({"run_id": STRING, "status": STRING,
                   "seconds": {"type": ["number", "null"], "minimum": 0,
                               "description": "how long the run took (null: not finished)"},
                   "x": NUMBER, "y": NUMBER, "width": NUMBER, "height": NUMBER,
                   "shape": {"enum": ["circle", "cross", "triangle"]}})
RUN_CHART = _object({"bars": {"type": "array", "items": {"$ref": "#/components/schemas/RunBar"}},
                     "top_s": NUMBER, "width": {"type": "integer"}, "height": {"type": "integer"},
                     "plot_top": {"type": "integer"}, "plot_bottom": {"type": "integer"},
                     "plot_left": {"type": "integer"}})
TRAFFIC = _object({"agent": STRING, "inbound": STRING, "outbound": STRING, "outbox": STRING,
                   "peak_per_minute": {"type": "integer", "minimum": 0},
                   "peak_outbox": {"type": "integer", "minimum": 0},
                   "minutes": {"type": "integer", "minimum": 0},
                   "total_in": {"type": "integer"}, "total_out": {"type": "integer"},
                   "width": {"type": "integer"}, "height": {"type": "integer"}})
STATE = _object({
    "taken": {**STRING, "description": "when the fleet was probed (UTC, ISO 8601)"},
    "fleet": {**STRING, "description": "the registry's fleet name (`?`: no registry)"},
    "agents": {"type": "array", "items": {"$ref": "#/components/schemas/Agent"}},
    "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"},
             "maxItems": RUNS_SHOWN, "description": "the newest run records, newest first"},
    "deployed_release": {**MAYBE_STRING, "description": "the newest deploy that went through"},
    "problem": {**MAYBE_STRING, "description": "why the fleet could not be probed"},
    "checks": {"type": ["array", "null"], "items": {"$ref": "#/components/schemas/Check"},
               "description": "the receiver's drift checks (null here: none)"},
    "counts": _object({state: {"type": "integer", "minimum": 0}
                       for state in ("ok", "drift", "down")}),
    "run_chart": {"oneOf": [{"$ref": "#/components/schemas/RunChart"}, {"type": "null"}],
                  "description": "the latest runs' durations and outcomes"},
    "traffic": {"type": "array", "items": {"$ref": "#/components/schemas/Traffic"},
                "description": "each agent's bus traffic over the last hour (SVG polylines)"},
    "work": {"oneOf": [{"$ref": "#/components/schemas/WorkBoard"}, {"type": "null"}],
             "description": "the orchestrator's work items (null: no Work section here)"}},
    optional=("run_chart", "traffic", "work"))
WORK_ROW = _object({"item_id": STRING, "state": {"enum": list(WORK_STATES)}, "issue": STRING,
                    "issue_url": MAYBE_STRING, "title": STRING, "assignee": MAYBE_STRING,
                    "pr_url": MAYBE_STRING, "reason": MAYBE_STRING, "updated": STRING})
WORK_BOARD = _object({
    "counts": _object({state: {"type": "integer", "minimum": 0} for state in WORK_STATES}),
    "items": {"type": "array", "items": {"$ref": "#/components/schemas/WorkRow"},
              "maxItems": WORK_SHOWN, "description": "the newest work items, newest first"},
    "problem": {**MAYBE_STRING, "description": "why the work API could not be read"}})
HOST_RECORD = {"type": "object", "properties": {
    "status": {"enum": ["ok", "failed", "rolled_back", "skipped", "planned"]},
    "release": MAYBE_STRING, "reason": STRING, "problems": STRINGS, "changed": STRINGS,
    "planned": STRINGS}}
RUN_RECORD = {"type": "object", "description": "the run record as `fleet deploy` or `fleet "
              "rollback` wrote it (secrets masked)", "properties": {
    "run_id": {"type": "string", "pattern": f"^{RUN_ID_RE.pattern}$"},
    "kind": {"enum": ["deploy", "rollback"]}, "dry": {"type": "boolean"},
    "status": {"enum": ["running", "ok", "degraded", "partial", "failed"]},
    "started": STRING, "finished": STRING, "release": STRING,
    "stages": {"type": "array", "items": {"type": "object"}},
    "verdicts": {"type": "object"},
    "hosts": {"type": "object", "additionalProperties": {
        "$ref": "#/components/schemas/HostRecord"}}}}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": STRING, "hint": STRING}, optional=("hint",)),
    "State": STATE, "Agent": AGENT_VIEW, "Run": RUN_VIEW, "HostRun": HOST_RUN,
    "Check": CHECK_VIEW, "RunRecord": RUN_RECORD, "HostRecord": HOST_RECORD,
    "RunBar": RUN_BAR, "RunChart": RUN_CHART, "Traffic": TRAFFIC, "WorkBoard": WORK_BOARD,
    "WorkRow": WORK_ROW}


def schemas(prefix: str) -> dict[str, Any]:
    """The dashboard's component schemas named ``prefix + name`` (their ``$ref``s too), for
    another document that serves the same routes (the webhook receiver's)."""
    def renamed(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: (REF + prefix + item.removeprefix(REF) if key == "$ref"
                          else renamed(item)) for key, item in value.items()}
        if isinstance(value, list):
            return [renamed(item) for item in value]
        return value
    return {prefix + name: renamed(schema) for name, schema in SCHEMAS.items()}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sovereign Fleet dashboard", "version": __version__,
             "description": "`fleet dashboard`: every agent's health, release, soul and config "
                            "state, bus backlog, and the latest runs. No auth: it listens on "
                            "the loopback unless told otherwise (`--host`). On the webhook "
                            "receiver the same routes need its read token (see the "
                            "receiver's /openapi.json)."},
    "security": [],
    "paths": {
        "/": _get("Redirects to the page", {"302": {
            "description": "to /dashboard/", "headers": {"Location": {
                "required": True, "schema": {"const": "/dashboard/"}}},
            "content": {"text/html": {"schema": STRING}}}}),
        "/dashboard/": _get("The fleet dashboard (HTML)",
                            {"200": _text("text/html", "the page")}),
        "/dashboard/live": _get("The live part of the page (HTML), fetched by its refresh",
                                {"200": {**_text("text/html", "agents and runs"), "headers": {
                                    "Cache-Control": {"required": True, "schema": {
                                        "const": "no-store"}}}}}),
        "/dashboard/state.json": _get("The dashboard's data", {"200": {
            "description": "agents, runs and counts", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/State"}}}}}),
        "/dashboard/runs/{run_id}.json": _get(
            "One run record from the records folder", {
                "200": {"description": "the record", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/RunRecord"}}}},
                "400": BAD_RUN_ID, "404": _json_error("no such run record (or no such path)")},
            parameters=[RUN_ID]),
        "/dashboard/runs/{run_id}/log": _get(
            "A run's log: only the receiver keeps them, so here it is never found", {
                "200": _text("text/plain", "the masked log (on the receiver)"),
                "400": BAD_RUN_ID, "404": _json_error("no log here")},
            parameters=[RUN_ID]),
        "/dashboard/static/{filename}": _get(
            "The page's stylesheet and script", {
                "200": {"description": "the file", "content": {
                    "text/css": {"schema": STRING}, "text/javascript": {"schema": STRING}}},
                "404": _json_error("no such file")},
            parameters=[{"name": "filename", "in": "path", "required": True,
                         "description": "`dashboard.css` or `dashboard.js`",
                         "schema": {"type": "string", "minLength": 1},
                         "examples": {name: {"value": f"dashboard.{name}"}
                                      for name in ("css", "js")}}]),
        "/openapi.json": _get("This document", {"200": {
            "description": "OpenAPI 3.1 document", "content": {"application/json": {
                "schema": {"type": "object", "required": ["openapi", "paths"]}}}}}),
    },
    "components": {"schemas": SCHEMAS},
}


@bp.get("/openapi.json")
def document() -> Response:
    """The OpenAPI document."""
    return jsonify(SPEC)
