"""POST /message with the Flask test client: validation, limits, auth, dedup, CloudEvents."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.bus.conftest import UNTRUSTED_KEY, dumps, message, rows, signed_headers

TYPES_SHOWN = "(request, response, broadcast, alert, work.item, work.event, work.outcome)"

AGENTS = "ezra, bezalel, allegro, ghost"


def post(client: FlaskClient, data: Any, agent: str = "ezra", **sign: Any) -> Any:
    body = data if isinstance(data, bytes) else dumps(data)
    return client.post("/message", data=body, headers=signed_headers(agent, body, **sign))


def test_stores_a_signed_message(client: FlaskClient, store: Path) -> None:
    response = post(client, message(correlation_id="c-1", reply_to="ezra", ttl=60))
    assert response.status_code == 201
    assert response.json == {"status": "stored", "id": "m-1"}
    assert rows(store, "SELECT id, sender, recipient, type, payload, correlation_id, reply_to,"
                       " ttl, format FROM inbox") == [
        ("m-1", "ezra", "bezalel", "request", '{"task": "review"}', "c-1", "ezra", 60, "fleet")]


def test_duplicate_is_acknowledged_and_stored_once(client: FlaskClient, store: Path) -> None:
    assert post(client, message()).status_code == 201
    again = post(client, message(payload="changed"))
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "id": "m-1"}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(1,)]
    assert rows(store, "SELECT name, value FROM counters ORDER BY name") == [
        ("duplicates", 1), ("received", 1)]


def test_same_id_from_another_sender_is_another_message(client: FlaskClient,
                                                        store: Path) -> None:
    assert post(client, message()).status_code == 201
    assert post(client, message(**{"from": "allegro"}), agent="allegro").status_code == 201
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(2,)]


@pytest.mark.parametrize(("fields", "problems"), [
    ({"id": None}, {"id": "missing required field"}),
    ({"type": "gossip"},
     {"type": "'gossip' is not a message type " + TYPES_SHOWN}),
    ({"timestamp": "yesterday"},
     {"timestamp": "'yesterday' is not an ISO 8601 timestamp with a UTC offset "
                   "(e.g. 2026-11-28T01:02:03Z)"}),
    ({"timestamp": "2026-11-28T01:02:03"},
     {"timestamp": "'2026-11-28T01:02:03' is not an ISO 8601 timestamp with a UTC offset "
                   "(e.g. 2026-11-28T01:02:03Z)"}),
    ({"to": "nobody"}, {"to": "'nobody' is not this agent (this gateway serves 'bezalel')"}),
    ({"to": "allegro"}, {"to": "'allegro' is not this agent (this gateway serves 'bezalel')"}),
    ({"ttl": 0}, {"ttl": "0 is not a whole number of seconds from 1 to 31536000"}),
    ({"reply_to": "x"}, {"reply_to": f"'x' is not an agent in the registry (agents: {AGENTS})"}),
    ({"type": "response"},
     {"correlation_id": "a response needs the correlation_id of its request"}),
    ({"colour": "red"}, {"colour": "unknown field (allowed: id, from, to, type, payload, "
                                   "timestamp, correlation_id, reply_to, ttl)"}),
    ({"id": "", "type": 3, "payload": None},
     {"id": "'' is not a non-empty string of at most 200 characters",
      "type": "3 is not a message type " + TYPES_SHOWN}),
])
def test_bad_fields_are_listed_and_not_stored(client: FlaskClient, store: Path,
                                              fields: dict[str, Any],
                                              problems: dict[str, str]) -> None:
    data = message(**{k: v for k, v in fields.items() if v is not None or k == "payload"})
    for name in [k for k, v in fields.items() if v is None and k != "payload"]:
        del data[name]
    response = post(client, data)
    assert response.status_code == 400
    assert response.json == {"error": "invalid message", "problems": problems}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_every_missing_field_is_listed(client: FlaskClient) -> None:
    response = post(client, {})
    assert response.status_code == 400
    assert response.json["problems"] == {
        name: "missing required field"
        for name in ("id", "from", "to", "type", "payload", "timestamp")}


def test_not_json_is_refused(client: FlaskClient, store: Path) -> None:
    response = post(client, b"{nope")
    assert response.status_code == 400
    assert response.json["problems"]["body"].startswith("not valid JSON")


def test_over_256_kib_is_refused(client: FlaskClient, store: Path) -> None:
    response = post(client, message(payload="x" * 256 * 1024))
    assert response.status_code == 413
    assert response.json == {"error": "request body is over 262144 bytes (the bus limit); send "
                                      "large data by reference (a URL in the payload)"}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_other_content_types_are_refused(client: FlaskClient, store: Path) -> None:
    response = post(client, dumps(message()), content_type="text/plain")
    assert response.status_code == 415
    assert response.json == {"error": "Content-Type 'text/plain' is not application/json or "
                                      "application/cloudevents+json (or a CloudEvents "
                                      "binary-mode request: ce-* headers)"}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


FORGED = "Signature: does not verify with 'ezra:"


@pytest.mark.parametrize(("sign", "error"), [
    ({"key": UNTRUSTED_KEY}, "Signature-Input: keyid 'ezra:"),
    ({"path": "/messages"}, FORGED),
    ({"host": "127.0.0.1:1234"}, FORGED),  # signed for another gateway
    ({"now": 1_000_000_000}, "Signature-Input: created 1000000000 is "),
])
def test_forged_or_stale_messages_get_401(client: FlaskClient, store: Path,
                                          sign: dict[str, Any], error: str) -> None:
    response = post(client, message(), **sign)
    assert response.status_code == 401
    assert response.json["error"].startswith(error)
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_stale_message_names_the_window(client: FlaskClient) -> None:
    response = post(client, message(), now=time.time() - 301)
    assert response.status_code == 401
    assert " s behind this gateway's clock (" in response.json["error"]
    assert response.json["error"].endswith("; allowed: up to 300 s)")


def test_unsigned_message_gets_401(client: FlaskClient, store: Path) -> None:
    response: Any = client.post("/message", json=message())
    assert response.status_code == 401
    assert response.json["error"] == "unsigned request: missing Signature-Input, Signature"
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_from_must_be_the_signing_agent(client: FlaskClient, store: Path) -> None:
    response = post(client, message(), agent="allegro")
    assert response.status_code == 401
    assert response.json["error"] == ("from 'ezra' does not match the signing agent 'allegro'")
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_cloudevent_is_mapped_into_the_inbox(client: FlaskClient, store: Path) -> None:
    event = {"specversion": "1.0", "id": "ce-1", "source": "ezra", "type": "fleet.alert",
             "time": "2026-11-28T01:02:03Z", "to": "bezalel", "correlationid": "c-9",
             "datacontenttype": "application/json", "data": {"disk": "full"}}
    response = post(client, event, content_type="application/cloudevents+json")
    assert response.status_code == 201
    assert rows(store, "SELECT id, sender, recipient, type, payload, timestamp, correlation_id,"
                       " format FROM inbox") == [
        ("ce-1", "ezra", "bezalel", "alert", '{"disk": "full"}', "2026-11-28T01:02:03Z", "c-9",
         "cloudevents")]


def test_bad_cloudevent_names_the_attributes(client: FlaskClient, store: Path) -> None:
    event = {"specversion": "0.3", "id": "ce-1", "source": "nobody", "type": "com.x.alert",
             "to": "bezalel"}
    response = post(client, event, content_type="application/cloudevents+json")
    assert response.status_code == 400
    assert response.json["problems"] == {
        "specversion": "'0.3' is not '1.0'",
        "source": "'nobody' is not an agent in the registry, or a URI reference ending in "
                  f"/<agent> such as /agents/bezalel (agents: {AGENTS})",
        "type": "'com.x.alert' is not fleet.<type> (e.g. fleet.request)",
    }
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def post_batch(client: FlaskClient, data: Any, agent: str = "ezra",
               content_type: str = "application/json") -> Any:
    body = dumps(data)
    return client.post("/messages/batch", data=body,
                       headers=signed_headers(agent, body, path="/messages/batch",
                                              content_type=content_type))


def test_batch_stores_valid_messages_and_lists_the_rest(client: FlaskClient,
                                                        store: Path) -> None:
    assert post(client, message(id="seen")).status_code == 201
    response = post_batch(client, {"messages": [
        message(id="a"), message(id="seen"), message(id="b", type="gossip"),
        message(id="c", **{"from": "allegro"}), message(id="d")]})
    assert response.status_code == 200
    assert response.json["results"] == [
        {"id": "a", "status": "stored"},
        {"id": "seen", "status": "duplicate"},
        {"id": "b", "status": "invalid", "problems": {
            "type": "'gossip' is not a message type " + TYPES_SHOWN}},
        {"id": "c", "status": "invalid", "problems": {
            "signer": "from 'allegro' does not match the signing agent 'ezra'"}},
        {"id": "d", "status": "stored"},
    ]
    assert rows(store, "SELECT id FROM inbox ORDER BY seq") == [("seen",), ("a",), ("d",)]


def test_cloudevents_batch_is_accepted(client: FlaskClient, store: Path) -> None:
    events = [{"specversion": "1.0", "id": f"ce-{n}", "source": "ezra", "type": "fleet.alert",
               "to": "bezalel", "data": n} for n in range(3)]
    response = post_batch(client, events, content_type="application/cloudevents-batch+json")
    assert [result["status"] for result in response.json["results"]] == ["stored"] * 3
    assert rows(store, "SELECT id, format FROM inbox") == [
        (f"ce-{n}", "cloudevents") for n in range(3)]


@pytest.mark.parametrize("data", [{"messages": []}, [message()], {"messages": "x"}])
def test_batch_needs_a_list_of_messages(client: FlaskClient, store: Path, data: Any) -> None:
    response = post_batch(client, data)
    assert response.status_code == 400
    assert response.json == {"error": "invalid batch", "problems": {
        "body": 'must be a JSON object {"messages": [...]} with 1 to 500 items and nothing '
                'else'}}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_batch_must_be_signed(client: FlaskClient, store: Path) -> None:
    response = client.post("/messages/batch", json={"messages": [message()]})
    assert response.status_code == 401
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]
