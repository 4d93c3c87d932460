"""A2A (issue 9): the agent card lists only the JSON-RPC binding the bus serves (``/a2a``)
with the security it needs; an a2a-sdk client built from the card lands a message in the
durable inbox, its sender authenticated by the bus signature."""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import parse_agent_card
from a2a.client.errors import A2AClientError
from a2a.compat.v0_3 import types as v03
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest
from flask.testing import FlaskClient
from google.protobuf.json_format import MessageToDict

from bus.a2a import httpx_signer
from bus.keys import signing_key
from tests.bus.conftest import KEYS, UNTRUSTED_KEY, Fleet, dumps, rows, signed_headers

CARD = "/.well-known/agent-card.json"


def rpc(method: str = "SendMessage", **message: Any) -> dict[str, Any]:
    """A JSON-RPC SendMessage call with an A2A 1.0 text message (``message`` replaces)."""
    body = {"messageId": "a2a-1", "role": "ROLE_USER", "parts": [{"text": "review #7"}],
            **message}
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": body}}


def post(client: FlaskClient, data: Any, agent: str = "ezra", **sign: Any) -> Any:
    body = dumps(data)
    return client.post("/a2a", data=body,
                       headers=signed_headers(agent, body, path="/a2a", **sign))


def test_card_lists_only_served_interfaces_with_their_security(client: FlaskClient) -> None:
    card = client.get(CARD).get_json()
    parsed = parse_agent_card(copy.deepcopy(card))  # a2a-sdk 1.x: the 1.0 protobuf model
    assert [(i.url.rsplit("/", 1)[1], i.protocol_binding, i.protocol_version)
            for i in parsed.supported_interfaces] == [("a2a", "JSONRPC", "1.0"),
                                                      ("a2a", "JSONRPC", "0.3")]
    schemes = {name: (s.api_key_security_scheme.location, s.api_key_security_scheme.name)
               for name, s in parsed.security_schemes.items()}
    assert schemes == {"httpSignature": ("header", "Signature"),
                       "httpSignatureInput": ("header", "Signature-Input")}
    assert [sorted(r.schemes) for r in parsed.security_requirements] == [sorted(schemes)]
    legacy = v03.AgentCard.model_validate(card)  # the 0.3 model still reads it
    assert legacy.preferred_transport == "JSONRPC" and legacy.url.endswith("/a2a")
    for interface in parsed.supported_interfaces:  # served: unsigned is 401, not 404/405
        path = "/" + interface.url.split("/", 3)[3]
        assert client.post(path, json=rpc()).status_code == 401


def test_a2a_send_message_lands_in_the_inbox(client: FlaskClient, store: Any) -> None:
    response = post(client, rpc(contextId="ctx-1"))
    assert response.status_code == 200
    result = response.json["result"]["message"]
    assert result["role"] == "ROLE_AGENT" and result["contextId"] == "ctx-1"
    assert result["parts"] == [{"data": {"status": "stored", "id": "a2a-1"}}]
    assert rows(store, "SELECT id, sender, recipient, type, format FROM inbox") == [
        ("a2a-1", "ezra", "bezalel", "request", "a2a")]
    again = post(client, rpc(contextId="ctx-1"))
    assert again.json["result"]["message"]["parts"][0]["data"]["status"] == "duplicate"
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(1,)]


def test_a2a_0_3_message_send_is_served(client: FlaskClient, store: Any) -> None:
    response = post(client, rpc("message/send", role="user", kind="message",
                                parts=[{"kind": "text", "text": "hi"}]))
    assert response.status_code == 200
    assert response.json["result"]["kind"] == "message"
    assert response.json["result"]["parts"] == [
        {"kind": "data", "data": {"status": "stored", "id": "a2a-1"}}]
    assert rows(store, "SELECT sender FROM inbox") == [("ezra",)]


@pytest.mark.parametrize(("call", "status", "code", "problems"), [
    ({**rpc(), "method": "GetTask"}, 400, -32600,
     {"method": "'GetTask' is not an A2A method served here (SendMessage, message/send)"}),
    (rpc(messageId=""), 400, -32602,
     {"params.message.messageId": "'' is not a non-empty string of at most 200 characters"}),
    (rpc(parts=[]), 400, -32602,
     {"params.message.parts": "[] is not a JSON array of 1 to 100 parts (objects)"}),
    (rpc(role="ROLE_BOSS"), 400, -32602, {
        "params.message.role": "'ROLE_BOSS' is not an A2A role (ROLE_USER, ROLE_AGENT, user, "
                               "agent)"}),
])
def test_bad_calls_get_a_json_rpc_error_naming_the_field(
        client: FlaskClient, store: Any, call: dict[str, Any], status: int, code: int,
        problems: dict[str, str]) -> None:
    response = post(client, call)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert response.json["error"]["data"] == {"problems": problems}
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


def test_a2a_needs_a_signature(client: FlaskClient, store: Any) -> None:
    unsigned = client.post("/a2a", json=rpc())
    assert unsigned.status_code == 401
    assert unsigned.json["error"] == "unsigned request: missing Signature-Input, Signature"
    forged = post(client, rpc(), key=UNTRUSTED_KEY)
    assert forged.status_code == 401
    assert forged.json["error"].startswith("Signature-Input: keyid 'ezra:")
    assert forged.json["error"].endswith("' is not trusted by this gateway")
    assert rows(store, "SELECT COUNT(*) FROM inbox") == [(0,)]


async def send_with_sdk(base_url: str, agent: str, key: str, text: str) -> dict[str, Any]:
    """Resolve the card, build an a2a-sdk client from it and send one message."""
    signer = httpx_signer(signing_key(agent, key))
    async with httpx.AsyncClient(event_hooks={"request": [signer]},
                                 timeout=10) as http:
        card = (await http.get(f"{base_url}{CARD}")).json()
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(
            parse_agent_card(card))
        request = SendMessageRequest(message=Message(
            message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)]))
        answers = [MessageToDict(answer) async for answer in client.send_message(request)]
        await client.close()
        assert len(answers) == 1
        return answers[0]


@pytest.mark.slow
def test_a2a_sdk_client_from_the_card_reaches_a_real_gateway(fleet: Fleet) -> None:
    bezalel, = fleet.start("bezalel")
    answer = asyncio.run(send_with_sdk(bezalel.url, "ezra", KEYS["ezra"], "review #7"))
    data = answer["message"]["parts"][0]["data"]
    assert data["status"] == "stored"
    inbox = bezalel.client().messages()["messages"]
    assert [(m["id"], m["from"], m["format"], m["payload"]["parts"]) for m in inbox] == [
        (data["id"], "ezra", "a2a", [{"text": "review #7"}])]
    with pytest.raises(A2AClientError, match="HTTP Error 401"):  # a wrong key cannot send
        asyncio.run(send_with_sdk(bezalel.url, "ezra", UNTRUSTED_KEY, "forged"))
