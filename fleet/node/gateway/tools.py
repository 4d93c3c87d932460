"""The tool execution API: ``POST /tools/NAME`` runs one of the agent's declared tools for a
signed caller allowed to use it; ``GET /tools`` lists them (public: names, argument schemas,
timeouts; never the commands); ``GET /tool-calls`` lists the recorded calls (owner-signed).

Mounted only on agents that declare tools. Every call is recorded (:mod:`fleet.node.tools.records`),
refusals too, in one place (:func:`record_call`, after the answer is made): unsigned or forged
(401), over the body limit (413), an unknown tool (404), a caller not allowed (403), a bad
body or bad arguments (400), a replay (409); a tool that could not run is 503, one past its
timeout is stopped (504). The body is ``{"args": {...}, "id": CALL_ID, "on_behalf_of":
{"from": AGENT, "id": REQUEST_ID}}`` (only ``args`` needed): ``id`` is the call's idempotency
key (default: derived from the signature), so a captured call sent again is refused;
``on_behalf_of`` names the request the agent's own runtime is answering, which must be
waiting in this agent's inbox, signed by an agent allowed to call the tool (no confused
deputy). The tool runs as the gateway's own user, inside its unit's sandbox, never through a
shell, under a supervisor that kills its whole process tree (:mod:`fleet.node.tools.run`).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from bus.db import get_db
from bus.inbox_store import pending_request
from bus.replay import ReplayError
from bus.schema import MAX_ID
from bus.signing import SECURITY
from bus.web import authenticate, fail, header_signer, json_body, signature_id
from fleet.core.registry import NAME_RE
from fleet.core.tool_model import MAX_ARG_CHARS, Tool
from fleet.node.gateway.agent import current_agent
from fleet.node.gateway.openapi import documenting, json_answer
from fleet.node.tools.records import calls, claim, finish, record
from fleet.node.tools.run import ToolError, argument_problems, run

bp = Blueprint("tools", __name__)
NAME = {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}
AGENT = {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}
ID_RE = re.compile(rf"[^\s\x00-\x1f\x7f]{{1,{MAX_ID}}}")
BODY_FIELDS = ("args", "id", "on_behalf_of")


def init_app(app: Flask) -> None:
    """Mount the tool API when the agent declares tools; describe it in /openapi.json."""
    if app.extensions["fleet.agent"].tools:
        app.register_blueprint(bp)
        app.after_request(documenting(paths))


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


def body_problems(body: Any) -> dict[str, str]:
    """Why a tool call's body is not ``{"args": {...}, "id"?, "on_behalf_of"?}``."""
    if not isinstance(body, dict):
        return {"body": 'is not {"args": {...}}'}
    problems = {name: f"is not a field of a tool call (fields: {', '.join(BODY_FIELDS)})"
                for name in body if name not in BODY_FIELDS}
    if "id" in body and not (isinstance(body["id"], str) and ID_RE.fullmatch(body["id"])):
        problems["id"] = f"is not 1 to {MAX_ID} printable characters without spaces"
    behalf = body.get("on_behalf_of")
    if "on_behalf_of" in body and not (
            isinstance(behalf, dict) and set(behalf) == {"from", "id"}
            and isinstance(behalf["from"], str) and NAME_RE.fullmatch(behalf["from"])
            and isinstance(behalf["id"], str) and ID_RE.fullmatch(behalf["id"])):
        problems["on_behalf_of"] = ('is not {"from": AGENT, "id": REQUEST_ID} naming the '
                                    "request this call is made for")
    return problems


def check_on_behalf_of(tool: Tool, caller: str, behalf: dict[str, str]) -> None:
    """403 unless ``behalf`` names a request waiting in this agent's inbox, the caller is the
    agent itself (its runtime answering it) and its sender may call ``tool``."""
    me = current_agent().name
    if caller != me:
        fail(403, f"only {me!r} itself (its runtime) may call a tool on behalf of a request, "
                  f"not {caller!r}")
    if not pending_request(get_db(), behalf["from"], behalf["id"]):
        fail(403, f"there is no unanswered request {behalf['id']!r} from {behalf['from']!r} "
                  f"in {me}'s inbox to call tool {tool.name!r} for")
    if not allowed(tool, behalf["from"]):
        fail(403, f"{behalf['from']!r} may not call tool {tool.name!r} (allowed: "
                  f"{', '.join([me, *tool.callers])}), so {me!r} may not call it for them")


@bp.post("/tools/<name>")
def call_tool(name: str) -> ResponseReturnValue:
    """Run tool NAME for a signed caller allowed to use it (recorded by
    :func:`record_call`)."""
    call: dict[str, Any] = {"tool": name}
    g.tool_call = call
    call["caller"] = caller = authenticate()
    state_dir = current_app.config["STATE_DIR"]
    tool = current_agent().tool(name)
    if tool is None:
        fail(404, f"no tool {name!r} on {current_agent().name} (tools: "
                  f"{', '.join(t.name for t in current_agent().tools)})")
    assert tool is not None
    body = json_body()
    problems = body_problems(body)
    if isinstance(body, dict) and "args" in body:
        call["args"] = body["args"]
    if isinstance(body, dict) and "on_behalf_of" not in problems and "on_behalf_of" in body:
        call["on_behalf_of"] = body["on_behalf_of"]["from"]
        call["request_id"] = body["on_behalf_of"]["id"]
    if not allowed(tool, caller):
        fail(403, f"{caller!r} may not call tool {name!r} (allowed: "
                  f"{', '.join([current_agent().name, *tool.callers])})")
    if problems:
        fail(400, "invalid tool call", problems)
    if "on_behalf_of" in body:
        check_on_behalf_of(tool, caller, body["on_behalf_of"])
    args = body.get("args", {})
    problems = argument_problems(tool, args)
    if problems:
        fail(400, f"invalid arguments for tool {name!r}", problems)
    call["call_id"] = body.get("id") or signature_id()
    fields = {key: call.get(key) for key in ("args", "on_behalf_of", "request_id")}
    try:
        call["seq"] = claim(state_dir, caller, call["call_id"], name, **fields)
    except ReplayError as exc:
        fail(409, str(exc), hint=exc.hint)
    try:
        done = run(tool, args, state_dir)
    except ToolError as exc:
        fail(400, f"invalid arguments for tool {name!r}", {"args": str(exc)})
    call["exit"], call["duration_ms"] = done.exit, done.duration_ms
    answer = {"tool": name, "exit": done.exit, "stdout": done.stdout, "stderr": done.stderr,
              "stdout_bytes": done.stdout_bytes, "stderr_bytes": done.stderr_bytes,
              "duration_ms": done.duration_ms, "timed_out": done.timed_out}
    if done.error:
        call["outcome"] = "error"
        return jsonify({**answer, "error": f"tool {name!r} could not run: {done.error}"}), 503
    if done.timed_out:
        call["outcome"] = "timeout"
        return jsonify({**answer, "error": f"tool {name!r} ran past its timeout of "
                                           f"{tool.timeout:g} s and was stopped (with every "
                                           "process it started)"}), 504
    call["outcome"] = "ok" if done.exit == 0 else "failed"
    return jsonify(answer)


@bp.after_request
def record_call(response: Response) -> Response:
    """Record every ``POST /tools/NAME``, whatever its answer: a call that ran gets its
    outcome, a refusal its status and error (caller None when the signature did not
    verify; for a body refused unread, 413, the signer of its headers)."""
    if request.endpoint != "tools.call_tool" or request.method != "POST":
        return response
    call: dict[str, Any] = g.pop("tool_call", None) or {
        "tool": (request.view_args or {}).get("name", "")}
    error = response.get_json(silent=True) if response.status_code >= 400 else None
    message = error.get("error") if isinstance(error, dict) else None
    if response.status_code == 413 and call.get("caller") is None:
        call["caller"] = header_signer()
    state_dir = current_app.config["STATE_DIR"]
    ended = {"status": response.status_code, "error": message,
             "exit": call.get("exit"), "duration_ms": call.get("duration_ms")}
    if "seq" in call:
        finish(state_dir, call["seq"], call.get("outcome", "error"), **ended)
    else:
        record(state_dir, call["tool"], caller=call.get("caller"), args=call.get("args"),
               on_behalf_of=call.get("on_behalf_of"), request_id=call.get("request_id"),
               call_id=call.get("call_id"), outcome="refused", **ended)
    return response


def call_body(args: dict[str, Any]) -> dict[str, Any]:
    """The request body of a tool call whose arguments follow the schema ``args``."""
    call_id = {"type": "string", "minLength": 1, "maxLength": MAX_ID,
               "pattern": "^[^\\s\\x00-\\x1f\\x7f]+$"}
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False, "properties": {
            "args": {**args, "description": "the tool's arguments (a string at most "
                     f"{MAX_ARG_CHARS} characters; nothing that looks like shell syntax "
                     "or starts with '-')"},
            "id": {**call_id, "description": "the call's id: the same id again is refused "
                   "(409); default: derived from the signature"},
            "on_behalf_of": {
                "type": "object", "required": ["from", "id"], "additionalProperties": False,
                "description": "the request in this agent's inbox the call is made for (the "
                               "agent's own runtime only)",
                "properties": {"from": AGENT, "id": call_id}}}}}}}


def paths() -> dict[str, Any]:
    """The OpenAPI operations of the tool API: ``/tools/{name}`` for any name, and each
    declared tool with its own argument schema."""
    signed: dict[str, Any] = {"security": SECURITY}
    error = json_answer("JSON error", {"type": "object", "required": ["error"]})
    unsigned = {"401": error, "413": error}
    ran = {"200": json_answer("the tool ran (exit code and output)"), "400": error, "403": error,
           "409": error, "503": json_answer("the tool could not run", {
               "type": "object", "required": ["error"]}),
           "504": json_answer("the tool ran past its timeout and was stopped"), **unsigned}
    found: dict[str, Any] = {
        "/tools": {"get": {"summary": "The agent's tools (public)",
                           "responses": {"200": json_answer("the tools")}}},
        "/tool-calls": {"get": {
            "summary": "Recorded tool calls (owner-signed)", **signed,
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "responses": {"200": json_answer("the calls"), "400": error, "403": error,
                          **unsigned}}},
        "/tools/{name}": {"post": {
            "summary": "Run a declared tool (signed, allowed callers)", **signed,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": NAME}],
            "requestBody": call_body({"type": "object"}),
            "responses": {**ran, "404": error}}},
    }
    agent = current_agent().name
    for tool in current_agent().tools:
        found[f"/tools/{tool.name}"] = {"post": {
            "summary": f"Run tool {tool.name} (signed: {', '.join([agent, *tool.callers])})",
            **signed, "requestBody": call_body(tool.args), "responses": ran}}
    return found
