"""A client for one agent's gateway, signing every request (RFC 9421, Ed25519).

Used by the agent runtime (its own gateway), the ``fleet bus`` commands and tests::

    with BusClient.from_env() as me:      # on a node: the agent's own environment
        me.send("bezalel", "request", {"task": "review"})     # queued in my outbox
        reply = me.request("bezalel", {"task": "review"}, timeout=30)

    with BusClient.for_agent(registry, "ezra-primary", operator_key) as ezra:  # the CLI
        ezra.messages(unacked=1)

A gateway lets its own agent's key and the operator's key (``operator``) use its inbox,
outbox and stats; other keys get 403.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol, Self
from urllib.parse import urlencode

import requests

from bus.errors import BusError
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, SigningKey, signing_key
from bus.signing import sign

LONG_POLL_S = 0.5
"""How long one inbox read waits for a message: short, so that a gateway restarting during a
deploy is never held up by a waiting reader for longer than this."""
LONG_POLL_MAX_S = 5.0  # the gateway's default limit (``BUS_MAX_WAIT_MS``)
SHORT_POLL_S = 0.05  # the pause between reads of a gateway that cannot long-poll
LONG_POLL_BUSY_S = 1.0  # the pause a gateway holding its limit of long polls asks (429)


class Gateway(Protocol):
    """An agent's entry in a directory of gateways (a fleet registry's agent)."""

    @property
    def gateway_url(self) -> str: ...


class Directory(Protocol):
    """Where each agent's gateway is: ``directory.get(agent).gateway_url`` (e.g. the fleet
    registry; the bus imports nothing of the fleet's)."""

    def get(self, name: str) -> Gateway: ...


class GatewayError(BusError):
    """A call failed; ``retryable`` when trying the same call again may succeed (the gateway
    was unreachable, busy or over a quota)."""

    def __init__(self, message: str, hint: str | None = None, retryable: bool = False,
                 status: int | None = None, problems: Mapping[str, str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable
        self.status = status  # the HTTP status, when the gateway answered
        self.problems = dict(problems or {})  # what the gateway named wrong, by field


class RequestTimeout(BusError, TimeoutError):
    """No correlated response arrived in time (both a :class:`BusError` and a TimeoutError)."""


class BusClient:
    """Signed HTTP calls to ``agent``'s gateway at ``base_url``.

    ``key`` signs every request: a :class:`bus.keys.SigningKey` (the agent's own, or the
    operator's), or the agent's private key text (``FLEET_BUS_PRIVATE_KEY``).
    """

    def __init__(self, base_url: str, agent: str, key: SigningKey | str,
                 timeout: float = 10.0) -> None:
        self.base_url, self.agent = base_url.rstrip("/"), agent
        self.key = signing_key(agent, key) if isinstance(key, str) else key
        self.timeout = timeout
        self.session = requests.Session()
        self.long_poll = True  # False once the gateway turned out not to know ``wait_ms``

    @classmethod
    def for_agent(cls, registry: Directory, agent: str,
                  keys: SigningKey | Mapping[str, str], timeout: float = 10.0) -> BusClient:
        """A client for ``agent``'s gateway from the registry, signing with ``keys``: one
        key (e.g. the operator's), or private key texts by identity name (``agent``'s own,
        else the operator's)."""
        url = registry.get(agent).gateway_url
        if isinstance(keys, SigningKey):
            return cls(url, agent, keys, timeout)
        for name in (agent, OPERATOR):
            if keys.get(name):
                return cls(url, agent, signing_key(name, keys[name]), timeout)
        raise BusError(f"no private bus key for {agent!r} or the operator (keys for: "
                       f"{', '.join(keys) or 'none'})",
                       hint=f"Set FLEET_SECRETS (identities.operator.{PRIVATE_KEY_ENV}, from "
                            "`fleet init`) "
                            f"or {PRIVATE_KEY_ENV}.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, timeout: float = 10.0) -> BusClient:
        """The client of the agent whose service environment ``env`` is (default:
        ``os.environ``): ``FLEET_AGENT``, its ``FLEET_BUS_PRIVATE_KEY`` and its gateway's
        ``FLEET_GATEWAY_URL`` (a deployed agent's env file has all three)."""
        env = os.environ if env is None else env
        names = ("FLEET_AGENT", PRIVATE_KEY_ENV, "FLEET_GATEWAY_URL")
        agent, key, url = (env.get(name, "") for name in names)
        if not agent or not key or not url:
            raise BusError(f"{', '.join(names[:-1])} and {names[-1]} must be set to build a "
                           "bus client from the environment",
                           hint="Run it in the agent's service environment (its env file).")
        return cls(url, agent, signing_key(agent, key), timeout)

    def call(self, method: str, path: str, params: Mapping[str, Any] | None = None,
             body: Any = None, content_type: str = "application/json") -> Any:
        """One signed request; the decoded JSON answer, or :class:`BusError` with the reason.

        A ``GET`` whose connection breaks (a kept-alive connection the gateway closed just as
        it was reused) is signed and sent once more on a new connection: reads change
        nothing. Other methods are never repeated here (``send`` repeats by message id)."""
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        data = b"" if body is None else json.dumps(body).encode()
        url = f"{self.base_url}{path}" + (f"?{query}" if query else "")
        attempts = 2 if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            headers = sign(self.key, method, url, data)
            if body is not None:
                headers["Content-Type"] = content_type
            try:
                with self.session.request(method, url, data=data or None, headers=headers,
                                          timeout=self.timeout) as response:
                    status, text = response.status_code, response.text
                break
            except requests.ConnectionError as exc:
                if attempt < attempts and not isinstance(exc, requests.ConnectTimeout):
                    continue
                raise self._unreachable(exc) from None
            except requests.RequestException as exc:
                raise self._unreachable(exc) from None
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            answer = {"error": text[:200]}
        if status >= 400:
            problems = answer.get("problems") or {}
            detail = "".join(f"; {name}: {problem}" for name, problem in problems.items())
            raise GatewayError(f"{method} {path}: HTTP {status}: {answer.get('error')}{detail}",
                               hint=answer.get("hint"), retryable=status >= 500 or status == 429,
                               status=status, problems=problems)
        return answer

    def _unreachable(self, exc: requests.RequestException) -> GatewayError:
        return GatewayError(f"{self.base_url}: cannot reach the gateway: {exc}",
                            hint="Is the agent's gateway running?", retryable=True)

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]:
        """Queue a message in this agent's outbox; ``{id, recipients, status}`` once it is
        durable.

        The message gets an id (``options["id"]``, else a new UUID) that is reused when the
        gateway cannot be reached or answers 5xx, up to ``retries`` more times: the gateway
        queues an id once, so a retry after a lost answer sends nothing twice.
        """
        fields = {"to": to, "type": type, "payload": payload, **options}
        fields["id"] = fields.get("id") or str(uuid.uuid4())
        for attempt in range(retries + 1):
            try:
                queued: dict[str, Any] = self.call("POST", "/outbox", body=fields)
                return queued
            except GatewayError as exc:
                if attempt == retries or not exc.retryable:
                    raise
                time.sleep(min(2.0, 0.1 * 2 ** attempt))
        raise AssertionError("unreachable")

    def messages(self, since: int = 0, limit: int = 100, wait: float = 0.0,
                 **filters: Any) -> dict[str, Any]:
        """Inbox page after ``since``: ``{messages, next}``; filters: type, correlation_id,
        from, unacked. With ``wait`` (seconds, at most :data:`LONG_POLL_MAX_S`) and nothing
        to list, the gateway answers as soon as a matching message arrives, else after
        ``wait`` (a gateway of an earlier release, without long polls, is read again after a
        short pause instead)."""
        query = {"since": since, "limit": limit, **filters}
        if wait > 0 and self.long_poll:
            try:
                longest = min(wait, LONG_POLL_MAX_S, self.timeout / 2)  # answered in time
                waited: dict[str, Any] = self.call(
                    "GET", "/messages", {**query, "wait_ms": int(longest * 1000)})
                return waited
            except GatewayError as exc:
                if exc.status == 429:  # the gateway holds its BUS_MAX_LONG_POLLS: nothing yet
                    time.sleep(min(longest, LONG_POLL_BUSY_S))
                    return {"messages": [], "next": since}
                if exc.problems.get("wait_ms") != "unknown parameter":
                    raise
                # compatibility: until 0.3.0: a gateway without long polls
                self.long_poll = False
        page: dict[str, Any] = self.call("GET", "/messages", query)
        if wait > 0 and not page.get("messages"):
            time.sleep(min(wait, SHORT_POLL_S))
        return page

    def ack(self, sender: str, message_id: str) -> bool:
        """Mark ``sender``'s inbox message ``message_id`` as handled (False if it was)."""
        done: dict[str, Any] = self.call("POST", "/messages/ack",
                                         body={"from": sender, "id": message_id})
        return bool(done["acked"])

    def request(self, to: str, payload: Any, timeout: float = 30.0,
                **options: Any) -> dict[str, Any]:
        """Send a request and wait for the response with its correlation id in the inbox."""
        correlation = options.pop("correlation_id", None) or str(uuid.uuid4())
        self.send(to, "request", payload, correlation_id=correlation, reply_to=self.agent,
                  **options)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            found = self.messages(type="response", correlation_id=correlation, limit=1,
                                  wait=min(left, LONG_POLL_S))
            if found["messages"]:
                return dict(found["messages"][0])
        raise RequestTimeout(f"no response from {to!r} to request {correlation} within "
                             f"{timeout} s",
                             hint=f"Check `fleet bus dead-letters {self.agent}` and {to}'s "
                                  "gateway.")

    def reply(self, request: Mapping[str, Any], payload: Any) -> dict[str, Any]:
        """Answer an inbox ``request`` with a correlated response."""
        return self.send(request.get("reply_to") or request["from"], "response", payload,
                         correlation_id=request.get("correlation_id") or request["id"])

    def stats(self) -> dict[str, Any]:
        """The gateway's ``/bus/stats``."""
        found: dict[str, Any] = self.call("GET", "/bus/stats")
        return found

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Messages this agent gave up delivering, newest first."""
        letters: list[dict[str, Any]] = self.call("GET", "/bus/dead-letters",
                                                  {"limit": limit})["dead_letters"]
        return letters

    def redrive(self, seqs: list[int] | None = None) -> list[dict[str, Any]]:
        """Queue dead letters (by ``seq``, or all) again; the re-queued ``{id, to}``."""
        moved: list[dict[str, Any]] = self.call("POST", "/bus/dead-letters/redrive",
                                                body={"seqs": seqs})["redriven"]
        return moved

    def close(self) -> None:
        """Close the HTTP connections."""
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
