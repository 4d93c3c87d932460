"""``GET /openapi.json``: the OpenAPI 3.1 document of every endpoint (public, no secrets)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from fleet import __version__
from fleet.dashboard.openapi import schemas as dashboard_schemas
from fleet.webhook.api import MAX_LIMIT, MAX_RUN_ID
from fleet.webhook.hooks import DELIVERY_RE, EVENT_RE
from fleet.webhook.push import REF_PATTERN, SHA_PATTERN
from fleet.webhook.queue import STATUSES

bp = Blueprint("openapi", __name__)
BEARER: list[dict[str, list[str]]] = [{"readToken": []}]


def _error(description: str) -> dict[str, Any]:
    """A documented error response."""
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    """A documented JSON response of schema ``schema``."""
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _header(name: str, description: str, pattern: str, required: bool = True
            ) -> dict[str, Any]:
    """A request header parameter (required unless said otherwise)."""
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


EVENT = f"^{EVENT_RE.pattern}$"
DELIVERY = f"^{DELIVERY_RE.pattern}$"
HOOK_HEADERS = {
    "gitea": [
        _header("X-Gitea-Event", "event name; `push` may deploy", EVENT),
        _header("X-Gitea-Delivery", "delivery UUID (replays are refused)", DELIVERY),
        _header("X-Gitea-Signature", "hex HMAC-SHA256 of the body with the secret",
                "^[0-9a-fA-F]{64}$")],
    "github": [
        _header("X-GitHub-Event", "event name; `push` may deploy", EVENT),
        _header("X-GitHub-Delivery", "delivery GUID (replays are refused)", DELIVERY),
        _header("X-Hub-Signature-256", "`sha256=` + hex HMAC-SHA256 of the body",
                "^sha256=[0-9a-fA-F]{64}$")],
    "gitlab": [
        _header("X-Gitlab-Event", "`Tag Push Hook` may deploy", EVENT),
        _header("X-Gitlab-Token", "the shared secret token", "^.{16,}$"),
        _header("X-Gitlab-Event-UUID", "event UUID (replays are refused)", DELIVERY),
        _header("Idempotency-Key", "same across retries; preferred over the event UUID",
                DELIVERY, required=False)],
}
HOOK_RESPONSES: dict[str, Any] = {
    "202": {"description": "queued (with run id) or ignored (with reason)",
            "content": {"application/json": {"schema": {"oneOf": [
                {"$ref": "#/components/schemas/Queued"},
                {"$ref": "#/components/schemas/Ignored"}]}}}},
    "400": _error("missing or malformed event or delivery header; a body that is not one "
                  "JSON object (invalid UTF-8, lone surrogates, NaN, nesting too deep) or not "
                  "a push"),
    "401": _error("missing or wrong signature or token"),
    "409": _error("delivery id already received"),
    "413": _error("body over 1 MiB"),
    "415": _error("Content-Type is not application/json"),
}
FORGE_NAMES = {"gitea": "Gitea", "github": "GitHub", "gitlab": "GitLab"}
SHA: dict[str, Any] = {"type": "string", "pattern": SHA_PATTERN}
PUSH_FIELDS: dict[str, Any] = {
    "ref": {"type": "string", "pattern": REF_PATTERN, "description": "e.g. refs/tags/PROD"},
    "after": {**SHA, "description": "the commit pushed (all zeros: the tag was deleted)"},
    "before": {"type": ["string", "null"], "pattern": SHA_PATTERN}}
# the fields a push event is read from; other events (ping, issues...) are answered 202 ignored
PUSH_BODIES: dict[str, Any] = {
    forge: {"type": "object", "description": "the forge's push payload",
            "required": ["ref", "after"], "properties": PUSH_FIELDS}
    for forge in ("gitea", "github")}
PUSH_BODIES["gitlab"] = {
    "type": "object", "required": ["ref", "after"], "description": "GitLab's push payload",
    "properties": {**PUSH_FIELDS, "checkout_sha": {
        "type": ["string", "null"], "pattern": r"^(?:[0-9a-f]{40}|[0-9a-f]{64})?$",
        "description": "the commit a tag points at (preferred over after; null or empty "
                       "when the tag was deleted)"}}}


def _hook(forge: str) -> dict[str, Any]:
    """The receiver of one forge."""
    return {"post": {
        "summary": f"Receive a {FORGE_NAMES[forge]} push event; queue a deploy for the "
                   "deploy tag",
        "parameters": HOOK_HEADERS[forge],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": PUSH_BODIES[forge]}}},
        "responses": HOOK_RESPONSES}}


RUN_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "status": {"enum": list(STATUSES)},
    **{name: {"type": ["string", "null"]} for name in (
        "forge", "tag", "sha", "commit_sha", "release", "before_sha", "pusher", "repository",
        "delivery_id", "queued_at", "started_at", "ended_at", "fleet_run_id", "record_path",
        "summary", "log_path")},
    "superseded_by": {"type": ["integer", "null"], "description": "run that deployed instead"},
    "rollback": {"type": "boolean", "description": "the tag was moved back to an ancestor of "
                 "the commit the fleet ran"},
    "rollback_from": {"type": ["string", "null"],
                      "description": "the release the fleet ran before this rollback"},
    "exit_status": {"type": ["integer", "null"]},
    "worker_pid": {"type": ["integer", "null"]},
    "hosts": {"type": "object", "description": "per host: status, changed, unchanged, failed, "
              "changes (operation names), errors"},
    "stages": {"type": "array", "description": "stages of the fleet run record"},
    "health": {"type": "array", "items": {"type": "object"}},
}

READ: list[dict[str, list[str]]] = [{"readToken": []}, {"readTokenBasic": []}]
RUN_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_RUN_ID}
UNAUTHORIZED = _error("missing or wrong read token")


def _page(content_type: str, description: str) -> dict[str, Any]:
    """A 200 answer of ``content_type`` text."""
    return {"description": description, "content": {content_type: {"schema": {"type": "string"}}}}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sovereign Fleet deploy webhook", "version": __version__,
             "description": "A signed push of the deploy tag runs the fleet deploy, one at a "
                            "time; every run is recorded."},
    "paths": {
        **{f"/hooks/{forge}": _hook(forge) for forge in FORGE_NAMES},
        "/hooks/{forge}": {"post": {
            "summary": "Any other forge name answers 404 (the three receivers are above)",
            "parameters": [{"name": "forge", "in": "path", "required": True, "schema": {
                "type": "string", "minLength": 1, "not": {"enum": list(FORGE_NAMES)}}}],
            "responses": {"404": _error("no receiver for this forge"), **HOOK_RESPONSES}}},
        "/runs": {"get": {
            "summary": "List runs, newest first", "security": BEARER,
            "parameters": [
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50}},
                {"name": "status", "in": "query", "schema": RUN_PROPERTIES["status"]},
                {"name": "before", "in": "query", "description": "only runs older than this "
                 "run id (the previous page's `next_before`)", "schema": {
                     "type": "integer", "minimum": 1, "maximum": MAX_RUN_ID}}],
            "responses": {"200": _ok("runs", "RunList"), "400": _error("bad query"),
                          "401": _error("missing or wrong read token")}}},
        "/runs/{run_id}": {"get": {
            "summary": "One run with per-host results and its log", "security": BEARER,
            "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": {
                "type": "integer", "minimum": 1, "maximum": MAX_RUN_ID}}],
            "responses": {"200": _ok("the run", "RunDetail"),
                          "400": _error("run_id is not a number from 1 to 2**63-1"),
                          "401": _error("missing or wrong read token"),
                          "404": _error("no such run")}}},
        "/drift-checks": {"get": {
            "summary": "Scheduled drift checks, newest first", "security": BEARER,
            "parameters": [{"name": "limit", "in": "query", "schema": {
                "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 20}}],
            "responses": {"200": _ok("drift checks", "DriftCheckList"),
                          "400": _error("bad query"),
                          "401": _error("missing or wrong read token")}}},
        "/healthz": {"get": {
            "summary": "Receiver health and queue state", "security": BEARER,
            "responses": {"200": _ok("up", "Health"),
                          "401": _error("missing or wrong read token")}}},
        "/dashboard/": {"get": {
            "summary": "The fleet dashboard (HTML)", "security": READ,
            "responses": {"200": _page("text/html", "the page"), "401": UNAUTHORIZED}}},
        "/dashboard/live": {"get": {
            "summary": "The live part of the dashboard (HTML), fetched by its refresh",
            "security": READ,
            "responses": {"200": _page("text/html", "agents, runs and drift checks"),
                          "401": UNAUTHORIZED}}},
        "/dashboard/state.json": {"get": {
            "summary": "The dashboard's data", "security": READ,
            "responses": {"200": _ok("agents, runs, drift checks", "DashboardState"),
                          "401": UNAUTHORIZED}}},
        "/dashboard/runs/{run_id}.json": {"get": {
            "summary": "The fleet run record the deploy of run `run_id` wrote (secrets masked); "
                       "`run_id` is the receiver's run id, as in `/runs/{run_id}`",
            "security": READ,
            "parameters": [{"name": "run_id", "in": "path", "required": True,
                            "schema": RUN_ID}],
            "responses": {"200": _ok("the record", "DashboardRunRecord"),
                          "401": UNAUTHORIZED,
                          "404": _error("no such run, or its deploy wrote no record")}}},
        "/dashboard/runs/{run_id}/log": {"get": {
            "summary": "A run's masked log (`run_id`: the receiver's run id)", "security": READ,
            "parameters": [{"name": "run_id", "in": "path", "required": True,
                            "schema": RUN_ID}],
            "responses": {"200": _page("text/plain", "the log"), "401": UNAUTHORIZED,
                          "404": _error("no such run or no log")}}},
        "/dashboard/static/{filename}": {"get": {
            "summary": "The dashboard's stylesheet and script", "security": READ,
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file", "content": {
                "text/css": {"schema": {"type": "string"}},
                "text/javascript": {"schema": {"type": "string"}}}},
                          "401": UNAUTHORIZED, "404": _error("no such file")}}},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1 document",
                                  "content": {"application/json": {}}}}}},
    },
    "components": {
        "securitySchemes": {
            "readToken": {"type": "http", "scheme": "bearer", "description": "FLEET_READ_TOKEN"},
            "readTokenBasic": {"type": "http", "scheme": "basic",
                               "description": "any user name, FLEET_READ_TOKEN as password"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Queued": {"type": "object", "required": ["status", "run_id"], "properties": {
                "status": {"const": "queued"}, "run_id": {"type": "integer"},
                "delivery": {"type": "string"}, "tag": {"type": "string"},
                "sha": {"type": "string"}, "run": {"type": "string"}}},
            "Ignored": {"type": "object", "required": ["status", "reason"], "properties": {
                "status": {"const": "ignored"}, "reason": {"type": "string"},
                "delivery": {"type": "string"}}},
            "Run": {"type": "object", "properties": RUN_PROPERTIES},
            "RunList": {"type": "object", "required": ["runs", "next_before"], "properties": {
                "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}},
                "next_before": {"type": ["integer", "null"], "description": "`before` of the "
                                "next page (older runs); null on the last page"}}},
            "RunDetail": {"allOf": [{"$ref": "#/components/schemas/Run"}, {
                "type": "object", "properties": {
                    "log": {"type": "string", "description": "last 256 KiB of the log"},
                    "covers": {"type": "array", "items": {"type": "integer"},
                               "description": "runs superseded by this one"}}}]},
            "DriftCheck": {"type": "object", "required": ["id", "status", "drifted"],
                           "properties": {
                "id": {"type": "integer"},
                "status": {"enum": ["running", "ok", "drift", "failed"]},
                "alert": {"enum": ["", "appeared", "cleared"]},
                "drifted": {"type": "array", "items": {"type": "string"}},
                "hosts": {"type": "array", "items": {"type": "object"}},
                **{name: {"type": ["string", "null"]} for name in (
                    "started_at", "ended_at", "commit_sha", "summary", "alert_status")},
                "heal_run_id": {"type": ["integer", "null"]}}},
            "DriftCheckList": {"type": "object", "properties": {
                "checks": {"type": "array",
                           "items": {"$ref": "#/components/schemas/DriftCheck"}}}},
            "Health": {"type": "object", "properties": {
                "status": {"const": "ok"}, "deploy_tag": {"type": "string"},
                "queued": {"type": "integer"},
                "running": {"type": "array", "items": {"type": "integer"}},
                "last_run": {"oneOf": [{"$ref": "#/components/schemas/Run"}, {"type": "null"}]}}},
            **dashboard_schemas("Dashboard"),
        },
    },
}


@bp.get("/openapi.json")
def document() -> Response:
    """The OpenAPI document."""
    return jsonify(SPEC)
