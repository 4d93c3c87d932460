"""Signed input that used to crash the gateway (500) is refused with a 4xx naming the field
and the rule, and nothing of it is stored or queued (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.bus.conftest import dumps, message, rows, signed_headers
from tests.bus.test_api import call

SURROGATE = ("contains a lone UTF-16 surrogate ('\\ud800'), which is not valid Unicode; send "
             "UTF-8 text")
TOO_DEEP = "nested deeper than 32 levels (the limit)"
TTL = "is not a whole number of seconds from 1 to 31536000"


def post_raw(client: FlaskClient, body: bytes, path: str = "/message",
             agent: str = "ezra") -> Any:
    return client.post(path, data=body, headers=signed_headers(agent, body, path=path))


def nested(levels: int) -> bytes:
    """A message whose payload is ``levels`` lists deep (written out: json.dumps recurses)."""
    data = message(payload="@")
    head, tail = json.dumps(data).split('"@"')
    return (head + "[" * levels + "]" * levels + tail).encode()


@pytest.mark.parametrize(("fields", "problems"), [
    ({"id": "\ud800"}, {"id": SURROGATE}),
    ({"correlation_id": "\ud800"}, {"correlation_id": SURROGATE}),
    ({"payload": {"text": ["ok", "\ud800"]}}, {"payload": SURROGATE}),
    ({"payload": {"\ud800": 1}}, {"payload": SURROGATE}),
    ({"ttl": 2**63}, {"ttl": f"9223372036854775808 {TTL}"}),
    ({"ttl": 2**64}, {"ttl": f"18446744073709551616 {TTL}"}),
])
def test_unstorable_fields_are_400_and_not_stored(client: FlaskClient, store: Path,
                                                  fields: dict[str, Any],
                                                  problems: dict[str, str]) -> None:
    response = post_raw(client, dumps(message(**fields)))
    assert response.status_code == 400
    assert response.json == {"error": "invalid message", "problems": problems}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


@pytest.mark.parametrize(("levels", "problems"), [
    (40, {"payload": TOO_DEEP}), (1_000, None), (100_000, {"body": TOO_DEEP})])
def test_deep_nesting_is_400_naming_the_limit(client: FlaskClient, store: Path, levels: int,
                                              problems: dict[str, str] | None) -> None:
    response = post_raw(client, nested(levels))
    assert response.status_code == 400
    assert response.json["problems"] in ({"payload": TOO_DEEP}, {"body": TOO_DEEP})
    if problems:
        assert response.json["problems"] == problems
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: FlaskClient, store: Path, constant: str) -> None:
    body = dumps(message(payload="@")).replace(b'"@"', constant.encode())
    response = post_raw(client, body)
    assert response.status_code == 400
    assert response.json == {"error": "invalid body", "problems": {
        "body": f"{constant} is not a JSON number (RFC 8259); send a string or null"}}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_a_number_overflowing_to_infinity_is_refused(client: FlaskClient, store: Path) -> None:
    body = dumps(message(payload="@")).replace(b'"@"', b"-1e400")
    response = post_raw(client, body)
    assert response.status_code == 400
    assert response.json == {"error": "invalid body", "problems": {
        "body": "-1e400 is out of range for a JSON number (it would be Infinity)"}}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_batch_with_one_bad_message_stores_the_others(client: FlaskClient, store: Path) -> None:
    body = dumps({"messages": [message(id="good"), message(id="\ud800"),
                               message(id="deep", payload=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[
                                   []]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]])]})
    response = post_raw(client, body, path="/messages/batch")
    assert response.status_code == 200
    assert response.json == {"results": [
        {"id": "good", "status": "stored"},
        {"id": None, "status": "invalid", "problems": {"id": SURROGATE}},
        {"id": "deep", "status": "invalid", "problems": {"payload": TOO_DEEP}}]}
    assert rows(store, "SELECT id FROM inbox") == [("good",)]


@pytest.mark.parametrize("ttl", [2**63, 2**64])
def test_outbox_refuses_a_huge_ttl(client: FlaskClient, store: Path, ttl: int) -> None:
    response = call(client, "POST", "/outbox", body={"to": "ezra", "type": "alert",
                                                     "payload": 1, "ttl": ttl})
    assert response.status_code == 400
    assert response.json == {"error": "invalid message", "problems": {"ttl": f"{ttl} {TTL}"}}
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


def test_outbox_refuses_nan(client: FlaskClient, store: Path) -> None:
    body = b'{"to": "ezra", "type": "alert", "payload": NaN}'
    response = client.post("/outbox", data=body, headers=signed_headers(
        "bezalel", body, path="/outbox"))
    assert response.status_code == 400
    assert response.json["problems"] == {
        "body": "NaN is not a JSON number (RFC 8259); send a string or null"}
    assert rows(store, "SELECT COUNT(*) FROM outbox") == [(0,)]


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("limit", "²", "'²' is not a whole number from 1 to 1000"),
    ("since", "²", "'²' is not an inbox position (a whole number >= 0 in ASCII digits)"),
    ("since", "٣", "'٣' is not an inbox position (a whole number >= 0 in ASCII digits)"),
    ("since", "9" * 30, f"'{'9' * 30}' is not an inbox position (a whole number >= 0 in ASCII "
                        "digits)"),
])
def test_unicode_digits_in_the_query_are_400(client: FlaskClient, name: str, value: str,
                                             problem: str) -> None:
    response = call(client, "GET", "/messages", {name: value})
    assert response.status_code == 400
    assert response.json == {"error": "invalid inbox query", "problems": {name: problem}}


def test_dead_letters_limit_in_unicode_digits_is_400(client: FlaskClient) -> None:
    response = call(client, "GET", "/bus/dead-letters", {"limit": "²"})
    assert response.status_code == 400
    assert response.json["problems"] == {"limit": "'²' is not a whole number from 1 to 1000"}
