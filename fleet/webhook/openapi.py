"""``GET /openapi.json``: the OpenAPI 3.1 document of every endpoint (public, no secrets)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from fleet import __version__

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


def _header(name: str, description: str) -> dict[str, Any]:
    """An optional request header parameter."""
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}


HOOK_HEADERS = [
    _header("X-Gitea-Event", "Gitea: event name; `push` may deploy"),
    _header("X-Gitea-Delivery", "Gitea: delivery UUID (replays are refused)"),
    _header("X-Gitea-Signature", "Gitea: hex HMAC-SHA256 of the body with the secret"),
    _header("X-GitHub-Event", "GitHub: event name; `push` may deploy"),
    _header("X-GitHub-Delivery", "GitHub: delivery GUID (replays are refused)"),
    _header("X-Hub-Signature-256", "GitHub: `sha256=` + hex HMAC-SHA256 of the body"),
    _header("X-Gitlab-Event", "GitLab: `Tag Push Hook` may deploy"),
    _header("X-Gitlab-Event-UUID", "GitLab: event UUID (replays are refused)"),
    _header("Idempotency-Key", "GitLab: same across retries; preferred over the event UUID"),
    _header("X-Gitlab-Token", "GitLab: the shared secret token"),
]

RUN_PROPERTIES: dict[str, Any] = {
    "id": {"type": "integer"},
    "status": {"enum": ["queued", "running", "success", "failed", "unhealthy", "superseded",
                        "interrupted"]},
    **{name: {"type": ["string", "null"]} for name in (
        "forge", "tag", "sha", "commit_sha", "before_sha", "pusher", "repository",
        "delivery_id", "queued_at", "started_at", "ended_at", "summary", "log_path")},
    "superseded_by": {"type": ["integer", "null"], "description": "run that deployed instead"},
    "exit_status": {"type": ["integer", "null"]},
    "worker_pid": {"type": ["integer", "null"]},
    "hosts": {"type": "object", "description": "per host: status, changed, unchanged, failed, "
              "changes (operation names), errors"},
    "health": {"type": "array", "items": {"type": "object"}},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Sovereign Fleet deploy webhook", "version": __version__,
             "description": "A signed push of the deploy tag runs the fleet deploy, one at a "
                            "time; every run is recorded."},
    "paths": {
        "/hooks/{forge}": {"post": {
            "summary": "Receive a forge's push event; queue a deploy for the deploy tag",
            "parameters": [{"name": "forge", "in": "path", "required": True,
                            "schema": {"enum": ["gitea", "github", "gitlab"]}}, *HOOK_HEADERS],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"type": "object", "description": "the forge's push payload"}}}},
            "responses": {
                "202": {"description": "queued (with run id) or ignored (with reason)",
                        "content": {"application/json": {"schema": {"oneOf": [
                            {"$ref": "#/components/schemas/Queued"},
                            {"$ref": "#/components/schemas/Ignored"}]}}}},
                "400": _error("missing event or delivery header, malformed JSON or push"),
                "401": _error("missing or wrong signature or token"),
                "409": _error("delivery id already received"),
                "413": _error("body over 1 MiB"),
                "415": _error("Content-Type is not application/json"),
            }}},
        "/runs": {"get": {
            "summary": "List runs, newest first", "security": BEARER,
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                            "maximum": 500, "default": 50}},
                {"name": "status", "in": "query", "schema": RUN_PROPERTIES["status"]}],
            "responses": {"200": _ok("runs", "RunList"), "400": _error("bad query"),
                          "401": _error("missing or wrong read token")}}},
        "/runs/{run_id}": {"get": {
            "summary": "One run with per-host results and its log", "security": BEARER,
            "parameters": [{"name": "run_id", "in": "path", "required": True,
                            "schema": {"type": "integer"}}],
            "responses": {"200": _ok("the run", "RunDetail"), "404": _error("no such run"),
                          "401": _error("missing or wrong read token")}}},
        "/healthz": {"get": {
            "summary": "Receiver health and queue state", "security": BEARER,
            "responses": {"200": _ok("up", "Health"),
                          "401": _error("missing or wrong read token")}}},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1 document",
                                  "content": {"application/json": {}}}}}},
    },
    "components": {
        "securitySchemes": {"readToken": {"type": "http", "scheme": "bearer",
                                          "description": "FLEET_READ_TOKEN"}},
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
            "RunList": {"type": "object", "properties": {
                "runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}}},
            "RunDetail": {"allOf": [{"$ref": "#/components/schemas/Run"}, {
                "type": "object", "properties": {
                    "log": {"type": "string", "description": "last 256 KiB of the log"},
                    "covers": {"type": "array", "items": {"type": "integer"},
                               "description": "runs superseded by this one"}}}]},
            "Health": {"type": "object", "properties": {
                "status": {"const": "ok"}, "deploy_tag": {"type": "string"},
                "queued": {"type": "integer"},
                "running": {"type": "array", "items": {"type": "integer"}},
                "last_run": {"oneOf": [{"$ref": "#/components/schemas/Run"}, {"type": "null"}]}}},
        },
    },
}


@bp.get("/openapi.json")
def document() -> Response:
    """The OpenAPI document."""
    return jsonify(SPEC)
