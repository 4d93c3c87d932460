"""The replay property of every signed state-changing route of a gateway (tool API, memory
API, work API, bus): the very same signed request sent again, whatever was stored in between,
changes nothing. It is refused (409, :mod:`bus.replay`) or answered as a duplicate of a
request whose id the gateway keeps (a message id). Every such route in ``/openapi.json`` (of
a worker's gateway and of the orchestrator's) must have a case here, so a new one cannot go
without."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import outbox, replay
from bus.keys import OPERATOR
from bus.store import connect
from fleet.core.runtime_config import MemorySettings
from fleet.node.runtime.memory import store_turn
from fleet.node.work import items
from tests.bus.conftest import bezalel_app, message, signed_headers
from tests.runtime.conftest import write_registry
from tests.work.items_gateway import FORGE, failed, gateway_app, issue

Request = tuple[str, str, str, Any, str]  # method, path, query, JSON body (None: none), signer
CASES: dict[tuple[str, str], Request] = {
    ("post", "/a2a"): ("POST", "/a2a", "", {
        "jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
            "messageId": "a2a-1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}}, "ezra"),
    ("post", "/bus/dead-letters/redrive"): ("POST", "/bus/dead-letters/redrive", "",
                                            {"seqs": None}, "bezalel"),
    ("delete", "/memory"): ("DELETE", "/memory", "peer=ezra&conversation=c", None, OPERATOR),
    ("post", "/message"): ("POST", "/message", "", message(id="m-2"), "ezra"),
    ("post", "/messages/ack"): ("POST", "/messages/ack", "", {"from": "ezra", "id": "in-0"},
                                "bezalel"),
    ("post", "/messages/batch"): ("POST", "/messages/batch", "",
                                  {"messages": [message(id="b-1")]}, "ezra"),
    ("post", "/outbox"): ("POST", "/outbox", "", {"to": "ezra", "type": "alert",
                                                  "payload": 1}, "bezalel"),
    ("post", "/tools/words"): ("POST", "/tools/words", "", {"args": {"text": "a b"}}, "ezra"),
}
CASES[("post", "/tools/{name}")] = CASES[("post", "/tools/words")]
RETRIED = items.work_id("gitea", f"{FORGE}/api/v1", "acme/shop", 1)
CANCELLED = items.work_id("gitea", f"{FORGE}/api/v1", "acme/shop", 2)
ORCHESTRATOR: dict[tuple[str, str], Request] = {  # the work API: on ezra's gateway only
    ("post", "/work/{item_id}/retry"): ("POST", f"/work/{RETRIED}/retry", "", None, OPERATOR),
    ("post", "/work/{item_id}/cancel"): ("POST", f"/work/{CANCELLED}/cancel", "", None,
                                         OPERATOR),
}
CASES.update(ORCHESTRATOR)
STATE = {"bus.sqlite3": ["SELECT sender, id, acked_at IS NULL FROM inbox ORDER BY sender, id",
                         "SELECT id, recipient FROM outbox ORDER BY id, recipient",
                         "SELECT id, recipient FROM dead_letters ORDER BY id, recipient"],
         "memory.db": ["SELECT peer, request_id FROM turns ORDER BY seq"],
         "work.sqlite3": ["SELECT id, state, version FROM items ORDER BY id"],
         "tools.sqlite3": ["SELECT seq, tool FROM tool_calls WHERE outcome != 'refused'"]}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """bezalel's gateway: built-in runtime (memory API), a tool, the bus."""
    folder = tmp_path_factory.mktemp("replays")
    return bezalel_app(write_registry(folder, "http://127.0.0.1:9/v1"), folder / "state")


@pytest.fixture(scope="module")
def ezra(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """ezra's gateway: the orchestrator (work API)."""
    folder = tmp_path_factory.mktemp("replays-ezra")
    return gateway_app(write_registry(folder, "http://127.0.0.1:9/v1"), folder / "state")


def work_since(app: Flask) -> None:
    """New state a replay could wrongly touch: the retried item failed again, the cancelled
    one taken in anew."""
    state = Path(app.config["STATE_DIR"])
    with items.connect(state) as db:
        db.execute("DELETE FROM items WHERE id = ? AND state = 'closed'", (CANCELLED,))
    issue(state, 2)
    try:
        item = items.get(state, RETRIED)
    except items.WorkNotFound:
        failed(state, 1)
        return
    if item["state"] == "queued":
        items.start(state, RETRIED, "bezalel")
        items.fail(state, RETRIED, "failed again")


def state_of(app: Flask) -> dict[str, list[tuple[Any, ...]]]:
    """What the gateway keeps that a request changes (bookkeeping of refusals left out)."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for store, queries in STATE.items():
        path = Path(app.config["STATE_DIR"]) / store
        if not path.exists():
            continue
        with contextlib.closing(sqlite3.connect(path)) as db:
            for query in queries:
                with contextlib.suppress(sqlite3.OperationalError):  # not created yet
                    found[f"{store}: {query}"] = db.execute(query).fetchall()
    return found


def stored_since(app: Flask, number: int) -> None:
    """New state a replay could wrongly touch: a turn, a dead letter, an inbox message."""
    state = Path(app.config["STATE_DIR"])
    store_turn(state, "ezra", "c", f"since-{number}", "q", {"text": "a"}, MemorySettings())
    db = connect(state / "bus.sqlite3")
    try:
        outbox.enqueue(db, {"id": f"dead-{number}", "from": "bezalel", "type": "alert",
                            "payload": 1}, ["ezra"])
        rows = outbox.claim(db, "1:w:0", 30, 10)
        outbox.finish(db, "1:w:0", [outbox.Outcome(row["seq"], dead_reason="refused")
                                    for row in rows], {}, 0, 0)
    finally:
        db.close()
    body = json.dumps(message(id=f"in-{number}")).encode()
    assert app.test_client().post("/message", data=body,
                                  headers=signed_headers("ezra", body)).status_code in (200, 201)


def send(client: FlaskClient, request: Request, headers: dict[str, str] | None = None,
         ) -> tuple[Any, dict[str, str]]:
    method, path, query, body, signer = request
    data = b"" if body is None else json.dumps(body).encode()
    headers = headers or signed_headers(signer, data, path=path, method=method, query=query,
                                        content_type=None if body is None else
                                        "application/json")
    answer = client.open(f"{path}?{query}" if query else path, method=method,
                         data=data or None, headers=headers)
    return answer, headers


def test_every_signed_state_changing_route_has_a_replay_case(app: Flask, ezra: Flask) -> None:
    routes = set()
    for gateway in (app, ezra):
        document = gateway.test_client().get("/openapi.json").json or {}
        routes |= {(method, path) for path, operations in document["paths"].items()
                   for method, operation in operations.items()
                   if method != "get" and operation.get("security")}
    assert routes == set(CASES)


Replayed = Callable[[Any], bool]
DUPLICATE: dict[str, Replayed] = {
    "/a2a": lambda answer: (answer.json["result"]["message"]["parts"][0]["data"]["status"]
                            == "duplicate"),
    "/message": lambda answer: answer.json["status"] == "duplicate",
    "/messages/batch": lambda answer: answer.json["results"][0]["status"] == "duplicate",
    "/messages/ack": lambda answer: answer.status_code == 200,  # acked already: no change
    "/outbox": lambda answer: answer.json["status"] == "duplicate",
}


def respelled(headers: dict[str, str], how: str) -> dict[str, str]:
    """The same signed headers spelled otherwise where the verifier does not sign: another
    label in both headers, or spaces around the signature."""
    if how == "same":
        return headers
    found = dict(headers)
    if how == "relabelled":
        label = found["Signature-Input"].split("=", 1)[0]
        found["Signature-Input"] = "x" + found["Signature-Input"][len(label):]
        found["Signature"] = "x" + found["Signature"][len(label):]
    else:
        found["Signature"] = f"  {found['Signature']}  "
    return found


@pytest.mark.parametrize("how", ["same", "relabelled", "spaced"])
@pytest.mark.parametrize("route", sorted(CASES))
def test_a_replayed_request_changes_nothing(app: Flask, ezra: Flask, route: tuple[str, str],
                                            how: str) -> None:
    """The very same request again, also with its signature headers spelled otherwise."""
    if route in ORCHESTRATOR:
        app, since = ezra, (lambda app, number: work_since(app))
    else:
        since = stored_since
    client = app.test_client()
    since(app, 0)
    first, headers = send(client, CASES[route])
    assert first.status_code in (200, 201, 202), first.json
    since(app, sorted(CASES).index(route) + 1)
    before = state_of(app)
    again, _ = send(client, CASES[route], respelled(headers, how))
    path = CASES[route][1]
    if path in DUPLICATE:
        assert DUPLICATE[path](again), again.json
    else:
        assert again.status_code == 409, again.json
        assert again.json["error"].endswith("is refused")
    assert state_of(app) == before


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(["ezra", OPERATOR]),
                          st.text(min_size=1, max_size=8)), max_size=20))
def test_the_guard_admits_each_callers_id_once(claims: list[tuple[str, str]]) -> None:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        admitted: set[tuple[str, str]] = set()
        for caller, request_id in claims:
            try:
                replay.claim(db, caller, request_id)
            except replay.ReplayError as exc:
                assert (caller, request_id) in admitted
                assert str(exc).endswith("; a replayed request is refused")
            else:
                assert (caller, request_id) not in admitted
                admitted.add((caller, request_id))
        replay.prune(db, now=10**12)  # a day on: every id may be used again
        assert db.execute("SELECT COUNT(*) FROM call_ids").fetchone() == (0,)
