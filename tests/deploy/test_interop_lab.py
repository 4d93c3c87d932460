"""Interop with a lab agent (issue 9): an a2a-sdk client built from a deployed agent's card,
and CloudEvents from the official SDK, each exchange a message with the agent's gateway on
its lab node, signed with the sender's own Ed25519 key from the secrets file."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import requests
from cloudevents.core.bindings.http import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV, signing_key
from bus.signing import sign
from fleet.core.registry import load_registry
from tests.bus.test_a2a import send_with_sdk
from tests.bus.test_cloudevents import BATCH, TRACEPARENT, sdk_events
from tests.deploy.conftest import SECRETS, Fleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def key_of(agent: str) -> str:
    return str(SECRETS["agents"][agent][PRIVATE_KEY_ENV])


@pytest.fixture(scope="module")
def deployed(fleet: Fleet) -> Fleet:
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    return fleet


def test_a2a_sdk_client_sends_to_a_lab_agent(deployed: Fleet) -> None:
    bezalel = load_registry(deployed.registry).get("bezalel")
    text = f"review {uuid.uuid4()}"
    answer = asyncio.run(send_with_sdk(bezalel.gateway_url, "ezra-primary",
                                       key_of("ezra-primary"), text))
    data = answer["message"]["parts"][0]["data"]
    assert data["status"] == "stored"
    with BusClient(bezalel.gateway_url, "bezalel", key_of("bezalel")) as inbox:
        found = [m for m in inbox.messages(limit=1000)["messages"] if m["id"] == data["id"]]
    assert [(m["from"], m["format"], m["payload"]["parts"]) for m in found] == [
        ("ezra-primary", "a2a", [{"text": text}])]


def test_official_cloudevents_sdk_exchanges_an_event_with_a_lab_agent(deployed: Fleet) -> None:
    bezalel = load_registry(deployed.registry).get("bezalel")
    event = CloudEvent(attributes={
        "id": f"sdk-{uuid.uuid4()}", "source": "/agents/allegro", "type": "fleet.request",
        "to": "bezalel", "subject": "job/1", "traceparent": TRACEPARENT,
        "time": datetime.now(UTC), "datacontenttype": "application/json"}, data={"n": 1})
    message = to_structured(event, JSONFormat())
    url = f"{bezalel.gateway_url}/message"
    headers = {**message.headers,
               **sign(signing_key("allegro", key_of("allegro")), "POST", url, message.body)}
    with requests.post(url, data=message.body, headers=headers, timeout=30) as response:
        assert response.status_code == 201, response.text
    inbox = f"{bezalel.gateway_url}/messages?limit=1000"
    headers = {"Accept": BATCH, **sign(signing_key("bezalel", key_of("bezalel")), "GET", inbox)}
    with requests.get(inbox, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == BATCH
        got = [e for e in sdk_events(response.content) if e.get_id() == event.get_id()]
    assert [(e.get_source(), e.get_subject(), e.get_extension("traceparent"), e.get_data())
            for e in got] == [("/agents/allegro", "job/1", TRACEPARENT, {"n": 1})]
    assert urlsplit(bezalel.gateway_url).hostname != "127.0.0.1"  # a lab node, not loopback
