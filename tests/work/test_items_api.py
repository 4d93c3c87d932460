"""The work API on the orchestrator's gateway (:mod:`fleet.node.gateway.work`): the
operator's only, strict about its query, a JSON problem for every refusal, mounted on the
orchestrator only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bus.keys import OPERATOR
from fleet.node.work import items
from tests.bus.conftest import signed_headers, write_registry
from tests.work.items_gateway import failed, gateway_app, issue, proposed


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return gateway_app(write_registry(tmp_path), tmp_path / "state")


def signed(client: FlaskClient, method: str, path: str, query: str = "",
           agent: str = OPERATOR, body: bytes = b"") -> Any:
    headers = signed_headers(agent, body, path=path, method=method, query=query,
                             content_type="application/json" if body else None)
    return client.open(f"{path}?{query}" if query else path, method=method, headers=headers,
                       data=body or None)


def test_the_operator_lists_pages_and_shows_items(app: Flask) -> None:
    state = Path(app.config["STATE_DIR"])
    made = [issue(state, 1), failed(state, 2), proposed(state, 3)]
    client = app.test_client()
    page = signed(client, "GET", "/work", "limit=2")
    assert page.status_code == 200
    assert [item["id"] for item in page.json["items"]] == [made[2], made[1]]
    assert page.json["next"] == made[1]
    assert page.json["counts"] == {"queued": 1, "working": 0, "proposed": 1, "failed": 1,
                                   "closed": 0}
    rest = signed(client, "GET", "/work", f"limit=2&after={made[1]}").json
    assert ([item["id"] for item in rest["items"]], rest["next"]) == ([made[0]], None)
    only = signed(client, "GET", "/work", "state=failed").json["items"]
    assert [(item["id"], item["reason"]) for item in only] == [
        (made[1], "tests still fail after 20 steps")]
    shown = signed(client, "GET", f"/work/{made[2]}").json
    assert shown["item"]["pr_url"] == "http://192.0.2.5:3000/acme/shop/pulls/103"
    assert [event["kind"] for event in shown["timeline"]] == [
        "intake", "routed", "turn", "tool", "test", "pushed", "proposed"]


def test_retry_and_cancel_change_the_state_or_say_why_not(app: Flask) -> None:
    state = Path(app.config["STATE_DIR"])
    broken, open_pr = failed(state, 1), proposed(state, 2)
    client = app.test_client()
    again = signed(client, "POST", f"/work/{broken}/retry")
    assert (again.status_code, again.json["item"]["state"]) == (200, "queued")
    refused = signed(client, "POST", f"/work/{open_pr}/retry")
    assert refused.status_code == 409
    assert refused.json == {
        "error": f"{open_pr} is proposed: only a failed item is retried; its pull request is "
                 "open (http://192.0.2.5:3000/acme/shop/pulls/102): review it on the forge",
        "hint": "See `fleet work show ID`."}
    assert signed(client, "POST", f"/work/{open_pr}/cancel").status_code == 409
    closed = signed(client, "POST", f"/work/{broken}/cancel")
    assert (closed.status_code, closed.json["item"]["reason"]) == (
        200, "cancelled by the operator")
    gone = signed(client, "GET", "/work", "after=w-000000000000")
    assert (gone.status_code, gone.json["problems"]) == (
        404, {"after": "no work item w-000000000000 to page after"})
    missing = signed(client, "POST", "/work/w-000000000000/retry")
    assert (missing.status_code, missing.json["error"]) == (404, "no work item w-000000000000")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/work"), ("GET", "/work/w-0123456789ab"), ("POST", "/work/w-0123456789ab/retry"),
    ("POST", "/work/w-0123456789ab/cancel")])
def test_the_work_api_is_the_operators_only(app: Flask, method: str, path: str) -> None:
    client = app.test_client()
    for agent in ("ezra", "bezalel"):  # the orchestrator's own key, and a worker's
        refused = signed(client, method, path, agent=agent)
        assert refused.status_code == 403
        assert refused.json == {"error": f"{path} is allowed only to the operator "
                                         f"('operator'), not {agent!r}",
                                "hint": "Use `fleet work` with the operator's key."}
    assert client.open(path, method=method).status_code == 401


@pytest.mark.parametrize(("path", "query", "problems"), [
    ("/work", "state=done", {"state": "'done' is not one of queued, working, proposed, "
                                      "failed, closed"}),
    ("/work", "limit=0", {"limit": "'0' is not a whole number from 1 to 200"}),
    ("/work", "limit=201", {"limit": "'201' is not a whole number from 1 to 200"}),
    ("/work", "limit=%EF%BC%93", {"limit": "'\uff13' is not a whole number from 1 to 200"}),
    ("/work", "after=w-XYZ", {"after": "'w-XYZ' is not 'w-' and 12 lowercase hex digits (as "
                                       "`fleet work list` shows them)"}),
    ("/work", "state=failed&state=queued", {"state": "given more than once"}),
    ("/work", "sort=id", {"sort": "not a query parameter here (state, limit, after)"}),
    ("/work/w-0123456789AB", "", {"id": "'w-0123456789AB' is not 'w-' and 12 lowercase hex "
                                        "digits (as `fleet work list` shows them)"}),
    ("/work/w-0123456789ab", "x=1", {"x": "not a query parameter here"})])
def test_bad_queries_are_400_naming_each_problem(app: Flask, path: str, query: str,
                                                 problems: dict[str, str]) -> None:
    answer = signed(app.test_client(), "GET", path, query)
    assert answer.status_code == 400
    assert answer.json["problems"] == problems


def test_a_post_with_a_body_is_refused_before_anything_changes(app: Flask) -> None:
    item_id = failed(Path(app.config["STATE_DIR"]), 1)
    answer = signed(app.test_client(), "POST", f"/work/{item_id}/retry",
                    body=json.dumps({"force": True}).encode())
    assert (answer.status_code, answer.json["problems"]) == (
        400, {"body": "this request takes no body"})
    huge = signed(app.test_client(), "POST", f"/work/{item_id}/retry", body=b"x" * 2_000_000)
    assert huge.status_code == 413 and "error" in huge.json
    assert items.get(app.config["STATE_DIR"], item_id)["state"] == "failed"


def test_the_work_api_is_on_the_orchestrator_only(tmp_path: Path) -> None:
    registry = write_registry(tmp_path)
    worker = gateway_app(registry, tmp_path / "worker", agent="bezalel")
    assert signed(worker.test_client(), "GET", "/work").status_code == 404
    assert not any(path.startswith("/work") for path in
                   worker.test_client().get("/openapi.json").json["paths"])
    orchestrator = gateway_app(registry, tmp_path / "orchestrator")
    assert {"/work", "/work/{item_id}", "/work/{item_id}/retry", "/work/{item_id}/cancel"} <= set(
        orchestrator.test_client().get("/openapi.json").json["paths"])


def test_a_refused_retry_stays_used_and_cannot_retry_a_failure_that_came_later(
        app: Flask) -> None:
    """Outside attack r36 (F5): the replay claim rolled back with the state refusal, so the
    same signed retry, refused while the item was working, queued it when replayed after the
    item had failed."""
    state = Path(app.config["STATE_DIR"])
    item_id = issue(state, 1)
    items.start(state, item_id, "bezalel")
    headers = signed_headers(OPERATOR, b"", path=f"/work/{item_id}/retry", method="POST",
                             query="")
    first = app.test_client().post(f"/work/{item_id}/retry", headers=headers)
    assert first.status_code == 409 and "a worker is on it" in first.json["error"]
    items.fail(state, item_id, "a failure after the operator's request")
    again = app.test_client().post(f"/work/{item_id}/retry", headers=headers)
    assert again.status_code == 409 and "replay" in again.json["error"]
    assert items.get(state, item_id)["state"] == "failed"
