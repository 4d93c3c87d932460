"""RFC 9421 signatures (issue 9): the RFC's test vector, the documented plain-Python example
against a real gateway, interop with an independent implementation, and what a worker's whole
environment cannot do to another agent."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

from bus.client import BusClient, GatewayError
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV, RECEIVER, private_keys
from bus.signing import AuthError, Target, sign, signature_base, signature_params, verify
from fleet.control.secrets import Secrets, load_secrets
from fleet.core.errors import BusError, SecretsError
from tests.bus.conftest import KEYS, PUBLIC, Fleet, dumps, message
from tests.waiting import wait_for

# RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2.6
RFC_KEY = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_COMPONENTS = [("date", "Tue, 20 Apr 2021 02:07:55 GMT"), ("@method", "POST"),
                  ("@path", "/foo"), ("@authority", "example.com"),
                  ("content-type", "application/json"), ("content-length", "18")]
RFC_PARAMS = ('("date" "@method" "@path" "@authority" "content-type" "content-length")'
              ';created=1618884473;keyid="test-key-ed25519"')
RFC_SIGNATURE = ("wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lI"
                 "p5WPpBKRCw==")


def test_rfc9421_b26_signature_base_and_signature() -> None:
    params = signature_params([name for name, _ in RFC_COMPONENTS],
                              [("created", 1618884473), ("keyid", "test-key-ed25519")])
    assert params == RFC_PARAMS
    base = signature_base(RFC_COMPONENTS, params)
    assert base.decode().splitlines()[-1] == f'"@signature-params": {RFC_PARAMS}'
    key = load_pem_private_key(RFC_KEY, None)
    assert isinstance(key, Ed25519PrivateKey)
    assert base64.b64encode(key.sign(base)).decode() == RFC_SIGNATURE


def test_rfc_example_is_refused_by_the_coverage_rule_not_the_crypto() -> None:
    """B.2.6 covers no query and no digest: a gateway wants both (the body is covered)."""
    headers = {"signature-input": f"sig-b26={RFC_PARAMS}",
               "signature": f"sig-b26=:{RFC_SIGNATURE}:", "date": RFC_COMPONENTS[0][1]}
    target = Target("POST", "https", "example.com", "/foo", "", headers.get)
    with pytest.raises(AuthError, match=r"must cover the target .*content-digest"):
        verify(target, b'{"hello": "world"}', {}, now=1618884473)


def documented_request(private_text: str, name: str, authority: str, path: str,
                       body: bytes) -> urllib.request.Request:
    """The plain-Python example of docs/bus-signatures.md, verbatim but for its inputs."""
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_text))
    public = private.public_key().public_bytes_raw()
    keyid = f"{name}:{hashlib.sha256(public).hexdigest()[:16]}"
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    params = ('("@method" "@authority" "@path" "@query" "content-digest")'
              f';created={int(time.time())};keyid="{keyid}";alg="ed25519"')
    base = "\n".join([
        '"@method": POST',
        f'"@authority": {authority}',
        f'"@path": {path}',
        '"@query": ?',
        f'"content-digest": {digest}',
        f'"@signature-params": {params}',
    ]).encode()
    signature = base64.b64encode(private.sign(base)).decode()
    return urllib.request.Request(f"http://{authority}{path}", data=body, method="POST",
                                  headers={"Content-Type": "application/json",
                                           "Content-Digest": digest,
                                           "Signature-Input": f"fleet={params}",
                                           "Signature": f"fleet=:{signature}:"})


def status(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_documented_plain_python_signing_is_accepted(fleet: Fleet) -> None:
    ezra, = fleet.start("ezra")
    body = json.dumps({"to": "bezalel", "type": "request", "payload": {"task": "review"},
                       "id": "job-42"}).encode()
    assert status(documented_request(KEYS["ezra"], "ezra", ezra.host, "/outbox", body)) == 202
    with ezra.client() as client:  # it was queued: the same id again is a duplicate
        assert client.send("bezalel", "request", {"task": "review"}, id="job-42")[
            "status"] == "duplicate"
    changed = documented_request(KEYS["ezra"], "ezra", ezra.host, "/outbox", body)
    changed.data = body.replace(b"review", b"delete")  # the digest no longer matches
    assert status(changed) == 401


class Keys(HTTPSignatureKeyResolver):
    """The library's key lookup: our keys by key id."""

    def __init__(self) -> None:
        self.keys = {key.keyid: key.key for name, text in KEYS.items()
                     for key in private_keys(name, text)}

    def resolve_private_key(self, key_id: str) -> Any:
        return self.keys[key_id]

    def resolve_public_key(self, key_id: str) -> Any:
        return self.keys[key_id].public_key()


@pytest.mark.slow
def test_interop_with_the_http_message_signatures_library(fleet: Fleet) -> None:
    bezalel, = fleet.start("bezalel")
    ezra = private_keys("ezra", KEYS["ezra"])[0]
    body = dumps(message(id="interop-1"))
    prepared = requests.Request("POST", f"{bezalel.url}/message", data=body,
                                headers={"Content-Type": "application/json"}).prepare()
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys()).sign(
        prepared, key_id=ezra.keyid, body=body,
        covered_component_ids=("@method", "@authority", "@path", "@query"))
    with requests.Session() as session:
        answer = session.send(prepared, timeout=10)
    assert answer.status_code == 201, answer.text
    # and the library verifies what the fleet's client signs
    ours = requests.Request("POST", f"{bezalel.url}/message", data=body,
                            headers=sign(ezra, "POST", f"{bezalel.url}/message", body)).prepare()
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=Keys())
    (result,) = verifier.verify(ours, max_age=timedelta(seconds=300), body=body)
    assert result.parameters["keyid"] == ezra.keyid


def fleet_secrets() -> Secrets:
    """The secrets file of the test fleet: a key per agent, the operator's, the receiver's."""
    return Secrets(agents={name: {PRIVATE_KEY_ENV: KEYS[name]} for name in
                           ("ezra", "bezalel", "allegro", "ghost")},
                   identities={name: {PRIVATE_KEY_ENV: KEYS[name]}
                               for name in (OPERATOR, RECEIVER)})


@pytest.mark.slow
def test_a_workers_whole_environment_cannot_act_as_another_agent(fleet: Fleet) -> None:
    """bezalel's service environment (what the deploy writes to its env file) holds its own
    private key and public keys only: with any key in it, ezra's inbox cannot be read or
    acknowledged, nothing can be queued in ezra's outbox or sent as ezra."""
    worker_env = fleet_secrets().for_agent("bezalel")
    assert worker_env[PUBLIC_KEYS_ENV] == PUBLIC  # what the gateways run with
    assert worker_env[PRIVATE_KEY_ENV] == KEYS["bezalel"]
    ezra, bezalel = fleet.start("ezra", "bezalel")
    with bezalel.client() as worker:
        worker.send("ezra", "request", {"task": "x"}, id="from-bezalel")
    with ezra.client() as owner:
        wait_for(lambda: owner.messages()["messages"], 20, "bezalel's message in ezra's inbox")
        assert [m["id"] for m in owner.messages()["messages"]] == ["from-bezalel"]
    # every value of the environment, tried as a private key of every identity
    candidates = []
    for value in worker_env.values():
        for part in value.replace("=", "= ").replace(",", " ").split():
            for name in ("ezra", OPERATOR, RECEIVER, "bezalel"):
                try:
                    candidates += private_keys(name, part)
                except Exception:  # not a private key
                    continue
    assert {key.keyid.split(":")[0] for key in candidates} == {"ezra", OPERATOR, RECEIVER,
                                                                "bezalel"}
    assert {key.keyid for key in candidates if key.name != "bezalel"}.isdisjoint(
        {key.keyid for name in ("ezra", OPERATOR, RECEIVER)
         for key in private_keys(name, KEYS[name])})  # only bezalel's key, renamed
    forged_message = dumps(message(id="as-ezra", to="ezra", **{"from": "ezra"}))
    for key in candidates:
        with BusClient(ezra.url, "ezra", key) as attacker:
            for attempt in (lambda: attacker.messages(),
                            lambda: attacker.ack("bezalel", "from-bezalel"),
                            lambda: attacker.send("bezalel", "alert", 1, retries=0),
                            lambda: attacker.call("POST", "/message", body=json.loads(
                                forged_message))):
                with pytest.raises(GatewayError, match=r"HTTP (401|403)"):
                    attempt()
    with ezra.client() as owner:  # still unacknowledged, nothing queued or stored as ezra
        assert [m["id"] for m in owner.messages(unacked=1)["messages"]] == ["from-bezalel"]
        assert owner.stats()["outbox_depth"] == 0
    with bezalel.client() as worker:
        assert worker.messages()["messages"] == []


def test_client_from_an_agents_environment() -> None:
    env = {"FLEET_AGENT": "ezra", PRIVATE_KEY_ENV: KEYS["ezra"],
           "FLEET_GATEWAY_URL": "http://127.0.0.1:9/"}
    with BusClient.from_env(env) as client:
        assert (client.agent, client.base_url) == ("ezra", "http://127.0.0.1:9")
        assert client.key.keyid == private_keys("ezra", KEYS["ezra"])[0].keyid
    for missing in ("FLEET_AGENT", PRIVATE_KEY_ENV, "FLEET_GATEWAY_URL"):
        with pytest.raises(BusError, match="FLEET_AGENT, FLEET_BUS_PRIVATE_KEY and "
                                           "FLEET_GATEWAY_URL must be set"):
            BusClient.from_env({name: value for name, value in env.items() if name != missing})


def test_old_shared_hmac_keys_are_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.touch(mode=0o600)
    path.write_text("agents:\n  ezra:\n    FLEET_BUS_KEY: 0123456789abcdef\n", encoding="utf-8")
    with pytest.raises(SecretsError, match=r"agents\.ezra\.FLEET_BUS_KEY: shared HMAC bus keys "
                                           r"were replaced by per-agent Ed25519 keys") as found:
        load_secrets(path)
    assert found.value.hint == ("Delete the FLEET_BUS_KEY lines, then run `fleet keys rotate "
                                "NAME` for each agent and `fleet keys rotate operator`.")
