"""CloudEvents (issue 9): binary mode accepted; ``traceparent``, URI sources, ``data_base64``
and ``subject`` kept; the inbox read back as events the official SDK (``cloudevents``)
parses, chosen by ``Accept``."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from flask.testing import FlaskClient

from tests.bus.conftest import Fleet, dumps, rows, signed_headers

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BATCH = "application/cloudevents-batch+json"
STRUCTURED = "application/cloudevents+json"


def binary_headers(**attributes: str) -> dict[str, str]:
    """``ce-*`` headers of an alert from ezra to bezalel (``attributes`` added/replaced)."""
    base = {"specversion": "1.0", "id": "ce-b1", "source": "/agents/ezra",
            "type": "fleet.alert", "to": "bezalel"}
    return {f"ce-{name}": value for name, value in {**base, **attributes}.items()}


def post_binary(client: FlaskClient, body: bytes, content_type: str | None,
                agent: str = "ezra", **attributes: str) -> Any:
    headers = signed_headers(agent, body, content_type=content_type)
    headers.update(binary_headers(**attributes))
    return client.post("/message", data=body, headers=headers)


def read(client: FlaskClient, accept: str, **query: str) -> Any:
    path = "/messages"
    text = "&".join(f"{k}={v}" for k, v in query.items())
    return client.get(path, query_string=text, headers={
        **signed_headers("bezalel", b"", path=path, method="GET", query=text,
                         content_type=None), "Accept": accept})


def sdk_events(body: bytes) -> list[Any]:
    """A CloudEvents JSON batch parsed with the official SDK, event by event."""
    return [JSONFormat().read(None, json.dumps(item)) for item in json.loads(body)]


def test_binary_mode_json_event_is_stored_with_its_attributes(client: FlaskClient,
                                                              store: Path) -> None:
    response = post_binary(client, dumps({"disk": "full"}), "application/json",
                           subject="disk/sda", traceparent=TRACEPARENT)
    assert response.status_code == 201
    assert response.json == {"status": "stored", "id": "ce-b1"}
    assert rows(store, "SELECT id, sender, type FROM inbox") == [("ce-b1", "ezra", "alert")]
    (event,) = sdk_events(read(client, BATCH).data)
    assert event.get_source() == "/agents/ezra"
    assert event.get_subject() == "disk/sda"
    assert event.get_extension("traceparent") == TRACEPARENT
    assert event.get_data() == {"disk": "full"}
    assert event.get_extension("seq") == 1


def test_binary_mode_other_data_is_kept_as_bytes(client: FlaskClient) -> None:
    data = bytes(range(256))
    response = post_binary(client, data, "application/octet-stream")
    assert response.status_code == 201
    (event,) = sdk_events(read(client, BATCH).data)
    assert event.get_data() == data
    assert event.get_datacontenttype() == "application/octet-stream"
    plain = read(client, "application/json").json["messages"][0]
    assert plain["payload"] is None
    assert base64.b64decode(plain["data_base64"]) == data


def test_structured_event_keeps_uri_source_subject_traceparent_and_base64(
        client: FlaskClient) -> None:
    event = {"specversion": "1.0", "id": "ce-s1", "source": "https://alpha/agents/ezra",
             "type": "fleet.request", "to": "bezalel", "subject": "review/7",
             "traceparent": TRACEPARENT, "tracestate": "fleet=1", "priority": 5,
             "datacontenttype": "text/plain", "data_base64": base64.b64encode(b"hi").decode()}
    body = dumps(event)
    response = client.post("/message", data=body,
                           headers=signed_headers("ezra", body, content_type=STRUCTURED))
    assert response.status_code == 201
    got = read(client, STRUCTURED)
    assert got.status_code == 200 and got.mimetype == STRUCTURED
    parsed = JSONFormat().read(None, got.data)
    assert parsed.get_source() == "https://alpha/agents/ezra"
    assert parsed.get_subject() == "review/7"
    assert parsed.get_extension("traceparent") == TRACEPARENT
    assert parsed.get_extension("tracestate") == "fleet=1"
    assert parsed.get_extension("priority") == 5
    assert parsed.get_data() == b"hi"
    assert {k: v for k, v in json.loads(got.data).items() if k != "time"} == {
        **{k: v for k, v in event.items()}, "seq": 1}


def test_uri_source_must_name_the_signing_agent(client: FlaskClient, store: Path) -> None:
    response = post_binary(client, b"{}", "application/json", agent="allegro")
    assert response.status_code == 401
    assert response.json["error"] == ("source '/agents/ezra' does not match the signing agent "
                                      "'allegro'")
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


@pytest.mark.parametrize(("attributes", "body", "content_type", "problems"), [
    ({"id": "", "traceparent": "nope"}, b"{}", "application/json", {
        "ce-id": "'' is not a non-empty string of at most 200 characters",
        "ce-traceparent": "'nope' is not a W3C traceparent (e.g. 00-4bf92f3577b34da6a3ce929"
                          "d0e0e4736-00f067aa0ba902b7-01)"}),
    ({"type": "com.example.x", "ttl": "soon"}, b"{}", "application/json", {
        "ce-type": "'com.example.x' is not fleet.<type> (e.g. fleet.request)",
        "ce-ttl": "'soon' is not a whole number of seconds from 1 to 31536000"}),
    ({"bad-name": "x"}, b"{}", "application/json", {
        "ce-bad-name": "unknown field, and not an extension attribute (1 to 20 lowercase "
                       "letters and digits)"}),
    ({}, b"{nope", "application/json", {
        "body": "not valid JSON: Expecting property name enclosed in double quotes: line 1 "
                "column 2 (char 1)"}),
])
def test_bad_binary_events_name_the_header(client: FlaskClient, store: Path,
                                           attributes: dict[str, str], body: bytes,
                                           content_type: str,
                                           problems: dict[str, str]) -> None:
    response = post_binary(client, body, content_type, **attributes)
    assert response.status_code == 400
    assert response.json == {"error": "invalid event", "problems": problems}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_data_and_data_base64_together_are_refused(client: FlaskClient) -> None:
    event = {"specversion": "1.0", "id": "x", "source": "ezra", "type": "fleet.alert",
             "to": "bezalel", "data": 1, "data_base64": "aGk="}
    body = dumps(event)
    response = client.post("/message", data=body,
                           headers=signed_headers("ezra", body, content_type=STRUCTURED))
    assert response.status_code == 400
    assert response.json["problems"] == {
        "data_base64": "an event has data or data_base64, not both"}


def test_empty_inbox_as_one_event_is_204_and_plain_json_is_unchanged(
        client: FlaskClient) -> None:
    assert read(client, STRUCTURED).status_code == 204
    assert read(client, BATCH).data == b"[]"
    assert read(client, "*/*").json == {"messages": [], "next": 0}


@pytest.mark.slow
def test_official_sdk_exchanges_events_with_a_real_gateway(fleet: Fleet) -> None:
    (bezalel,) = fleet.start("bezalel")
    sent = []
    for number, (mode, data) in enumerate([(to_binary, {"n": 1}), (to_structured, {"n": 2}),
                                           (to_binary, b"\x00raw")]):
        event = CloudEvent(attributes={
            "id": f"sdk-{number}", "source": "/agents/allegro", "type": "fleet.request",
            "to": "bezalel", "subject": f"job/{number}", "traceparent": TRACEPARENT,
            "time": datetime.now(UTC),
            "datacontenttype": "application/octet-stream" if isinstance(data, bytes)
            else "application/json"}, data=data)
        message = mode(event, JSONFormat())
        headers = {**message.headers,
                   **signed_headers("allegro", message.body, content_type=None,
                                    host=bezalel.host)}
        with requests.post(f"{bezalel.url}/message", data=message.body, headers=headers,
                           timeout=10) as response:
            assert response.status_code == 201, response.text
        sent.append(event)
    path = "/messages"
    with requests.get(f"{bezalel.url}{path}", timeout=10, headers={
            "Accept": BATCH, **signed_headers("bezalel", b"", path=path, method="GET",
                                              content_type=None, host=bezalel.host)}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == BATCH
        got = sdk_events(response.content)
    assert [(e.get_id(), e.get_source(), e.get_subject(), e.get_extension("traceparent"),
             e.get_data(), e.get_time()) for e in got] == [
        (e.get_id(), e.get_source(), e.get_subject(), e.get_extension("traceparent"),
         e.get_data(), e.get_time()) for e in sent]
