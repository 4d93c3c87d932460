"""The tool execution API: ``POST /tools/NAME`` runs one of the agent's declared tools for a
signed caller allowed to use it; ``GET /tools`` lists them (public: names, argument schemas,
timeouts; never the commands); ``GET /tool-calls`` lists the recorded calls (owner-signed).

Mounted only on agents that declare tools. Every call is recorded, refusals too: an unknown
tool (404), a caller not allowed (403), bad or shell-shaped arguments (400), a tool past its
timeout is stopped (504). The tool runs as the gateway's own user, inside its unit's sandbox,
never through a shell.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from bus.signing import SECURITY
from bus.web import authenticate, fail, json_body
from fleet.gateway import current_agent
from fleet.tools import Tool
from fleet.tools.records import calls, record
from fleet.tools.run import argument_problems, run

bp = Blueprint("tools", __name__)
NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}


def init_app(app: Flask) -> None:
    """Mount the tool API when the agent declares tools; describe it in /openapi.json."""
    if app.extensions["fleet.agent"].tools:
        app.register_blueprint(bp)
        app.after_request(_document)


def allowed(tool: Tool, caller: str) -> bool:
    """The agent itself, and the agents the tool names, may call it."""
    return caller == current_agent().name or caller in tool.callers


@bp.get("/tools")
def list_tools() -> ResponseReturnValue:
    """The agent's tools: name, description, argument schema, timeout (public)."""
    return jsonify({"tools": [{"name": tool.name, "description": tool.description,
                               "args": tool.args, "timeout": tool.timeout}
                              for tool in current_agent().tools]})


@bp.get("/tool-calls")
def list_calls() -> ResponseReturnValue:
    """Recorded tool calls, newest first (owner-signed)."""
    authenticate(owner_only=True)
    limit = request.args.get("limit", "100")
    if not limit.isascii() or not limit.isdigit() or not 1 <= int(limit) <= 1000:
        fail(400, "invalid query", {"limit": f"{limit!r} is not a whole number from 1 to 1000"})
    return jsonify({"calls": calls(current_app.config["STATE_DIR"], int(limit))})


@bp.post("/tools/<name>")
def call_tool(name: str) -> ResponseReturnValue:
    """Run tool NAME with ``{"args": {...}}`` for a signed caller allowed to use it."""
    caller = authenticate()
    state_dir = current_app.config["STATE_DIR"]
    tool = current_agent().tool(name)
    if tool is None:
        record(state_dir, caller, name, None, "refused: unknown tool")
        fail(404, f"no tool {name!r} on {current_agent().name} (tools: "
                  f"{', '.join(t.name for t in current_agent().tools)})")
    assert tool is not None
    body = json_body()
    args = body.get("args", {}) if isinstance(body, dict) else None
    if not allowed(tool, caller):
        record(state_dir, caller, name, args, "refused: caller not allowed")
        fail(403, f"{caller!r} may not call tool {name!r} (allowed: "
                  f"{', '.join([current_agent().name, *tool.callers])})")
    if not isinstance(body, dict) or set(body) - {"args"}:
        record(state_dir, caller, name, None, "refused: bad body")
        fail(400, "invalid tool call", {"body": 'is not {"args": {...}}'})
    problems = argument_problems(tool, args)
    if problems:
        record(state_dir, caller, name, args, "refused: bad arguments")
        fail(400, f"invalid arguments for tool {name!r}", problems)
    assert isinstance(args, dict)
    done = run(tool, args, state_dir)
    outcome = "timeout" if done.timed_out else ("ok" if done.exit == 0 else "failed")
    record(state_dir, caller, name, args, outcome, done.exit, done.duration_ms)
    answer = {"tool": name, "exit": done.exit, "stdout": done.stdout, "stderr": done.stderr,
              "duration_ms": done.duration_ms, "timed_out": done.timed_out}
    if done.timed_out:
        answer["error"] = f"tool {name!r} ran past its timeout of {tool.timeout:g} s and was " \
                          "stopped"
        return jsonify(answer), 504
    return jsonify(answer)


def _document(response: Response) -> Response:
    """Add the tool API to the gateway's /openapi.json."""
    if request.path != "/openapi.json" or response.status_code != 200:
        return response
    document = response.get_json()
    document["paths"].update(paths())
    response.set_data(current_app.json.dumps(document))
    return response


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": schema or {"type": "object"}}}}


def paths() -> dict[str, Any]:
    """The OpenAPI operations of the tool API."""
    signed: dict[str, Any] = {"security": SECURITY}
    error = _answer("JSON error", {"type": "object", "required": ["error"]})
    unsigned = {"401": error, "413": error}
    return {
        "/tools": {"get": {"summary": "The agent's tools (public)",
                           "responses": {"200": _answer("the tools")}}},
        "/tool-calls": {"get": {
            "summary": "Recorded tool calls (owner-signed)", **signed,
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": _answer("the calls"), "400": error, "403": error,
                          **unsigned}}},
        "/tools/{name}": {"post": {
            "summary": "Run a declared tool (signed, allowed callers)", **signed,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "properties": {"args": {"type": "object"}},
                "additionalProperties": False}}}},
            "responses": {"200": _answer("the tool ran (exit code and output)"),
                          "400": error, "403": error, "404": error,
                          "504": _answer("the tool ran past its timeout and was stopped"),
                          **unsigned}}},
    }
