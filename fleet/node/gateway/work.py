"""The operator's view of the orchestrator's work items (:mod:`fleet.node.work.items`):
``GET /work?state=S&limit=N&after=ID`` lists them, newest first, a page at a time;
``GET /work/ID`` shows one with its timeline; ``POST /work/ID/retry`` queues a failed item
again and ``POST /work/ID/cancel`` closes a queued, working or failed one. Each POST is
accepted once per signature: the same signed request again is a replay, refused (409) by the
gateway's replay guard (:mod:`bus.replay`), so it cannot retry a failure that came since.

Mounted on the orchestrator only (elsewhere ``/work`` is 404). Signed requests of the
operator only (unsigned 401, any other key 403). The query is checked whole: unknown or
repeated names, a state not in :data:`~fleet.node.work.items.STATES`, a limit out of bounds,
an id that is not one: 400 naming the rule; an ``after`` or an id of no item: 404. The POSTs
take no body (the bus's body limit refuses a large one, 413, before it is read). Every
refusal is a JSON problem, never a 500.
"""

from __future__ import annotations

from typing import Any, NoReturn

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from bus.keys import OPERATOR
from bus.replay import ReplayError
from bus.signing import SECURITY
from bus.web import fail, read_body, signature_id
from fleet.node.gateway.agent import current_agent
from fleet.node.gateway.memory import operator_only
from fleet.node.gateway.openapi import documenting, json_answer
from fleet.node.work import items
from fleet.node.work.items import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATES,
    WORK_ID_RE,
    WORK_ID_RULE,
    WorkItemError,
    WorkNotFound,
    WorkValueError,
    shown,
)

bp = Blueprint("work", __name__)
COMMAND = "fleet work"
QUERY = ("state", "limit", "after")


def init_app(app: Flask) -> None:
    """Mount the work API on the orchestrator; describe it in /openapi.json."""
    if app.extensions["fleet.agent"].role == "orchestrator":
        app.register_blueprint(bp)
        app.after_request(documenting(paths))


def refused(exc: WorkItemError) -> NoReturn:
    """A store refusal as its HTTP problem: 404 no such item, 400 a bad value, else 409."""
    status = 404 if isinstance(exc, WorkNotFound) else 400 if isinstance(
        exc, WorkValueError) else 409
    fail(status, str(exc), hint=exc.hint)


def checked_item(item_id: str) -> str:
    """The id in the path, whole (400 naming the rule)."""
    if WORK_ID_RE.fullmatch(item_id) is None:
        fail(400, "invalid work item id", {"id": f"{shown(item_id)} is not {WORK_ID_RULE}"})
    return item_id


def list_query() -> tuple[str | None, int, str | None]:
    """``state``, ``limit`` and ``after`` from the query, each at most once and checked
    whole; no other name (400 naming every problem)."""
    problems = {name: "not a query parameter here (state, limit, after)"
                for name in request.args if name not in QUERY}
    problems |= {name: "given more than once" for name in QUERY
                 if len(request.args.getlist(name)) > 1}
    state = request.args.get("state")
    limit_text = request.args.get("limit", str(DEFAULT_LIMIT))
    after = request.args.get("after")
    if state is not None and state not in STATES:
        problems["state"] = f"{shown(state)} is not one of {', '.join(STATES)}"
    limit = int(limit_text) if limit_text.isascii() and limit_text.isdigit() and len(
        limit_text) <= 4 else 0
    if not 1 <= limit <= MAX_LIMIT:
        problems["limit"] = f"{shown(limit_text)} is not a whole number from 1 to {MAX_LIMIT}"
    if after is not None and WORK_ID_RE.fullmatch(after) is None:
        problems["after"] = f"{shown(after)} is not {WORK_ID_RULE}"
    if problems:
        fail(400, "invalid query", problems)
    return state, limit, after


def no_body() -> None:
    """400 unless the request has no body (a POST here says all in its path)."""
    if read_body():
        fail(400, "invalid body", {"body": "this request takes no body"})
    if request.args:
        fail(400, "invalid query", {name: "not a query parameter here"
                                    for name in request.args})


@bp.get("/work")
def list_items() -> ResponseReturnValue:
    """A page of work items, newest first, with every state's count and the next page."""
    operator_only(COMMAND)
    state, limit, after = list_query()
    try:
        page = items.listing(current_app.config["STATE_DIR"], state, limit, after)
    except WorkNotFound as exc:
        fail(404, str(exc), {"after": str(exc)}, hint=exc.hint)
    return jsonify({"agent": current_agent().name, **page})


@bp.get("/work/<item_id>")
def show_item(item_id: str) -> ResponseReturnValue:
    """One work item and its timeline, oldest event first."""
    operator_only(COMMAND)
    checked_item(item_id)
    if request.args:
        fail(400, "invalid query", {name: "not a query parameter here"
                                    for name in request.args})
    state_dir = current_app.config["STATE_DIR"]
    try:
        found = items.get(state_dir, item_id)
        events = items.timeline(state_dir, item_id)
    except WorkItemError as exc:
        refused(exc)
    return jsonify({"agent": current_agent().name, "item": found, "timeline": events})


@bp.post("/work/<item_id>/retry")
def retry_item(item_id: str) -> ResponseReturnValue:
    """Queue a failed item again; any other state is 409 naming why; a replay is 409."""
    return change(item_id, items.retry)


@bp.post("/work/<item_id>/cancel")
def cancel_item(item_id: str) -> ResponseReturnValue:
    """Close a queued, working or failed item; proposed or closed is 409; a replay 409."""
    return change(item_id, items.cancel)


def change(item_id: str, how: Any) -> ResponseReturnValue:
    """Retry or cancel ``item_id`` once per signed request."""
    operator_only(COMMAND)
    checked_item(item_id)
    no_body()
    try:
        found = how(current_app.config["STATE_DIR"], item_id, once=(OPERATOR, signature_id()))
    except ReplayError as exc:
        fail(409, str(exc), hint=exc.hint)
    except WorkItemError as exc:
        refused(exc)
    return jsonify({"agent": current_agent().name, "item": found})


def paths() -> dict[str, Any]:
    """The OpenAPI operations of the work API."""
    signed: dict[str, Any] = {"security": SECURITY}
    error = json_answer("JSON problem", {"type": "object", "required": ["error"]})
    item_id = {"name": "item_id", "in": "path", "required": True, "description": WORK_ID_RULE,
               "schema": {"type": "string", "pattern": f"^{WORK_ID_RE.pattern}$"}}
    answers = {"400": error, "401": error, "403": error, "404": error, "413": error}
    one = json_answer("the item", {"type": "object", "required": ["item"]})
    change_answers = {"200": one, **answers,
                      "409": json_answer("refused: not legal from the item's state, or a "
                                         "replay of this signed request", {
                                             "type": "object", "required": ["error"]})}
    return {
        "/work": {"get": {
            "summary": "Work items, newest first, a page at a time (the operator only)",
            **signed, "parameters": [
                {"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(STATES)}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
                {"name": "after", "in": "query", "required": False,
                 "description": "the last id of the previous page",
                 "schema": {"type": "string", "pattern": f"^{WORK_ID_RE.pattern}$"}}],
            "responses": {"200": json_answer("a page of items", {
                "type": "object", "required": ["items", "next", "counts"]}), **answers}}},
        "/work/{item_id}": {"get": {
            "summary": "A work item and its timeline (the operator only)", **signed,
            "parameters": [item_id],
            "responses": {"200": json_answer("the item and its timeline", {
                "type": "object", "required": ["item", "timeline"]}), **answers}}},
        "/work/{item_id}/retry": {"post": {
            "summary": "Queue a failed work item again (the operator only)", **signed,
            "parameters": [item_id], "responses": change_answers}},
        "/work/{item_id}/cancel": {"post": {
            "summary": "Close a queued, working or failed work item (the operator only)",
            **signed, "parameters": [item_id], "responses": change_answers}},
    }
