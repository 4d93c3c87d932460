"""Inbox, outbox, stats, metrics and OpenAPI endpoints with the Flask test client."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.bus.conftest import dumps, message, rows, signed_headers
from tests.waiting import wait_for

TYPES_SHOWN = "(request, response, broadcast, alert, work.item, work.event, work.outcome)"


def call(client: FlaskClient, method: str, path: str, params: dict[str, Any] | None = None,
         body: Any = None, agent: str = "bezalel") -> Any:
    """A request signed as ``agent`` (the gateway's own agent by default)."""
    query = urlencode(params or {})
    data = b"" if body is None else dumps(body)
    headers = signed_headers(agent, data, path=path, method=method, query=query,
                             content_type="application/json" if body is not None else None)
    return client.open(path + (f"?{query}" if query else ""), method=method, data=data,
                       headers=headers)


def receive(client: FlaskClient, status: int = 201, **fields: Any) -> None:
    data = message(**fields)
    body = dumps(data)
    response = client.post("/message", data=body, headers=signed_headers(data["from"], body))
    assert response.status_code == status, response.json


def test_messages_lists_after_a_cursor_with_filters(client: FlaskClient) -> None:
    receive(client, id="a")
    receive(client, id="b", type="alert")
    receive(client, id="c", type="response", correlation_id="x")
    page = call(client, "GET", "/messages").json
    assert [m["id"] for m in page["messages"]] == ["a", "b", "c"]
    assert page["next"] == 3
    assert page["messages"][0] | {"timestamp": None, "received_at": None} == {
        "seq": 1, "id": "a", "from": "ezra", "to": "bezalel", "type": "request",
        "payload": {"task": "review"}, "timestamp": None, "correlation_id": None,
        "reply_to": None, "ttl": None, "format": "fleet", "received_at": None, "acked_at": None}
    assert [m["id"] for m in call(client, "GET", "/messages", {"since": 1}).json["messages"]] \
        == ["b", "c"]
    assert [m["id"] for m in call(client, "GET", "/messages", {"type": "alert"}).json[
        "messages"]] == ["b"]
    assert [m["id"] for m in call(client, "GET", "/messages", {"correlation_id": "x"}).json[
        "messages"]] == ["c"]
    assert [m["id"] for m in call(client, "GET", "/messages", {"limit": 1}).json[
        "messages"]] == ["a"]


def test_bad_inbox_query_lists_each_parameter(client: FlaskClient) -> None:
    response = call(client, "GET", "/messages",
                    {"since": "-1", "limit": "5000", "type": "x", "unacked": "maybe", "q": "1"})
    assert response.status_code == 400
    assert response.json["problems"] == {
        "since": "'-1' is not an inbox position (a whole number >= 0 in ASCII digits)",
        "limit": "'5000' is not a whole number from 1 to 1000",
        "type": "'x' is not a message type " + TYPES_SHOWN,
        "unacked": "'maybe' is not 1, 0, true or false",
        "q": "unknown parameter",
    }


def test_a_long_poll_answers_when_a_message_arrives(client: FlaskClient, app: Flask) -> None:
    """``wait_ms``: the read waits for a matching message, and answers as soon as one is
    stored (by another connection, as another gunicorn worker would)."""
    receive(client, id="early", type="alert")  # does not match type=request
    arrived: list[float] = []
    watch = app.extensions["bus"].watch

    def later() -> None:
        wait_for(lambda: watch.waiting == 1, 5, "the read to wait")  # stored after it waits
        receive(app.test_client(), id="late")
        arrived.append(time.monotonic())

    sender = threading.Thread(target=later)
    started = time.monotonic()
    sender.start()
    response = call(client, "GET", "/messages", {"type": "request", "wait_ms": 5_000})
    answered = time.monotonic()
    sender.join()
    assert response.status_code == 200
    assert [m["id"] for m in response.json["messages"]] == ["late"]
    assert answered - arrived[0] < 0.5  # heard of at once, not after the 5 s wait
    assert answered - started < 5


def test_a_long_poll_with_nothing_answers_after_its_wait(client: FlaskClient) -> None:
    started = time.monotonic()
    response = call(client, "GET", "/messages", {"wait_ms": 200})
    took = time.monotonic() - started
    assert response.json == {"messages": [], "next": 0}
    assert 0.2 <= took < 2


@pytest.mark.parametrize(("value", "problem"), [
    ("5001", "'5001' is not milliseconds to wait for a message, 0 to 5000"),
    ("-1", "'-1' is not milliseconds to wait for a message, 0 to 5000"),
    ("\u0661\u0660", "'\u0661\u0660' is not milliseconds to wait for a message, 0 to 5000"),
    ("0.5", "'0.5' is not milliseconds to wait for a message, 0 to 5000"),
])
def test_a_bad_wait_is_400_at_once(client: FlaskClient, value: str, problem: str) -> None:
    started = time.monotonic()
    response = call(client, "GET", "/messages", {"wait_ms": value})
    assert time.monotonic() - started < 1
    assert response.status_code == 400
    assert response.json["problems"] == {"wait_ms": problem}


def test_ack_marks_a_message_handled(client: FlaskClient, store: Path) -> None:
    receive(client, id="a")
    receive(client, id="b")
    response = call(client, "POST", "/messages/ack", body={"from": "ezra", "id": "a"})
    assert response.status_code == 200
    assert response.json == {"acked": True, "from": "ezra", "id": "a"}
    again = call(client, "POST", "/messages/ack", body={"from": "ezra", "id": "a"})
    assert (again.status_code, again.json["acked"]) == (200, False)
    unacked = call(client, "GET", "/messages", {"unacked": 1}).json["messages"]
    assert [m["id"] for m in unacked] == ["b"]
    missing = call(client, "POST", "/messages/ack", body={"from": "ezra", "id": "zzz"})
    assert missing.status_code == 404
    assert missing.json["error"] == "message 'zzz' from 'ezra' is not in the inbox"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/messages"), ("POST", "/messages/ack"), ("GET", "/bus/stats"),
    ("GET", "/bus/dead-letters"), ("POST", "/outbox"), ("POST", "/bus/dead-letters/redrive"),
])
def test_owner_endpoints_refuse_other_agents_and_unsigned(client: FlaskClient, method: str,
                                                          path: str) -> None:
    body = {"to": "ezra", "type": "alert", "payload": 1} if path == "/outbox" else None
    other = call(client, method, path, body=body, agent="ezra")
    assert other.status_code == 403
    assert other.json["error"] == (f"{path} is allowed only to 'bezalel' (its own key) and the "
                                   "operator, not 'ezra'")
    assert client.open(path, method=method).status_code == 401
    if path != "/outbox":  # the receiver's key may queue alerts, nothing else
        assert call(client, method, path, agent="receiver").status_code == 403
    assert call(client, method, path, body=body, agent="operator").status_code not in (401, 403)


def test_receiver_key_queues_alerts_only(client: FlaskClient, store: Path) -> None:
    alert = {"to": "ezra", "type": "alert", "payload": {"drift": True}, "id": "al-1"}
    assert call(client, "POST", "/outbox", body=alert, agent="receiver").status_code == 202
    request = {**alert, "type": "request", "id": "rq-1"}
    refused = call(client, "POST", "/outbox", body=request, agent="receiver")
    assert refused.status_code == 403
    assert refused.json["error"] == "the 'receiver' key may only queue messages of type 'alert'"
    assert [json.loads(body)["from"] for body, in rows(store, "SELECT body FROM outbox")] == [
        "bezalel"]


def test_outbox_queues_one_row_per_recipient(client: FlaskClient, store: Path) -> None:
    response = call(client, "POST", "/outbox", body={"type": "broadcast", "payload": "hi",
                                                     "id": "b-1"})
    assert response.status_code == 202
    assert response.json == {"id": "b-1", "recipients": ["ezra", "allegro", "ghost"],
                             "status": "queued"}
    assert call(client, "POST", "/outbox", body={"type": "broadcast", "payload": "hi",
                                                 "id": "b-1"}).status_code == 200
    queued = rows(store, "SELECT recipient, body FROM outbox ORDER BY seq")
    assert [(name, json.loads(body)["to"]) for name, body in queued] == [
        ("ezra", "ezra"), ("allegro", "allegro"), ("ghost", "ghost")]
    assert json.loads(queued[0][1])["from"] == "bezalel"


def test_outbox_refuses_bad_messages(client: FlaskClient, store: Path) -> None:
    response = call(client, "POST", "/outbox", body={"type": "request", "payload": 1,
                                                     "ttl": -5, "to": "*"})
    assert response.status_code == 400
    assert response.json["problems"] == {
        "ttl": "-5 is not a whole number of seconds from 1 to 31536000",
        "to": "a message that is not a broadcast needs one recipient (an agent); only a "
              "broadcast goes to '*'"}
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


def test_stats_and_metrics_count_the_store(client: FlaskClient) -> None:
    receive(client, id="a")
    receive(client, 200, id="a")
    call(client, "POST", "/outbox", body={"to": "ezra", "type": "alert", "payload": 1})
    stats = call(client, "GET", "/bus/stats").json
    assert stats == {"agent": "bezalel", "received": 1, "duplicates": 1, "delivered": 0,
                     "retried": 0, "dead_lettered": 0, "redriven": 0, "outbox_depth": 1,
                     "inbox_messages": 1,
                     "inbox_unacked": 1, "dead_letters": 0, "delivery_by_region": {}}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.content_type.startswith("text/plain; version=0.0.4")
    text = metrics.get_data(as_text=True)
    assert 'fleet_bus_received_total{agent="bezalel"} 1\n' in text
    assert 'fleet_bus_outbox_depth{agent="bezalel"} 1\n' in text
    assert "# TYPE fleet_bus_outbox_depth gauge\n" in text


def test_openapi_documents_every_route(app: Flask, client: FlaskClient) -> None:
    document: Any = client.get("/openapi.json").json
    documented = {(path, method) for path, operations in document["paths"].items()
                  for method in operations}
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    assert routes == documented
    assert ("/message", "post") in routes and ("/health", "get") in routes
    assert document["openapi"].startswith("3.")
    signed = {path for path, operations in document["paths"].items()
              for operation in operations.values() if "security" in operation}
    assert signed == {"/message", "/messages/batch", "/messages", "/messages/ack", "/a2a",
                      "/outbox", "/bus/stats", "/bus/dead-letters", "/bus/dead-letters/redrive"}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/message", 405), ("DELETE", "/messages", 405), ("GET", "/bus/nothing", 404),
])
def test_http_errors_on_bus_paths_are_json(client: FlaskClient, method: str, path: str,
                                           status: int) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json
    assert response.json["error"].startswith(f"{status} ")


def test_other_paths_keep_flasks_error_page(client: FlaskClient) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert not response.is_json
