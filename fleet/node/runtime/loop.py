"""The built-in runtime: answers ``request`` messages from the agent's durable inbox with its
model, the soul as system prompt.

For each unacknowledged request, oldest first: past its ``ttl`` it gets an error response and
the model is not asked (an asker that gave up waits no more); otherwise the model is asked
(retryable provider errors back off and retry until the provider returns or the ttl runs out;
a call never outlasts the ttl) and the answer is queued as a ``response`` with the request's
``correlation_id``; an answer with no tokens is an error. While idle, the runtime checks its
model every ``model_check_s`` seconds (a 1-token round trip), so ``/health`` shows a model
that went away without waiting for a request.

The response's id is derived from the request (:func:`response_id`), and the gateway queues
an id once, so a crash between the reply and the acknowledgement answers nothing twice: the
request is handled again after the restart and the same response is sent again, which the
outbox drops as a duplicate. The request is acknowledged only after that.

A request naming a ``conversation`` (:mod:`fleet.node.runtime.memory`) is sent to the model
with the conversation's recent turns between the soul and its prompt; its turn, with the
whole response payload, is stored once before the response is queued. Handled again after a
crash, it is answered with the stored payload (the model is not asked again), so the memory
and the response sent agree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bus.client import LONG_POLL_S
from bus.timestamps import parse_timestamp
from bus.validate import expired
from fleet.core.runtime_config import MemorySettings, RuntimeSettings
from fleet.node.provider import (
    Completion,
    Provider,
    ProviderError,
    answered_tokens,
    round_trip,
)
from fleet.node.runtime.memory import conversation_of, recent, store_turn, stored_reply
from fleet.node.runtime.state import write_state

log = logging.getLogger("fleet.node.runtime")
MAX_PROMPT_CHARS = 32_000
BACKOFF_MAX_S = 30.0
PROBE_TIMEOUT_S = 30.0
HEARTBEAT_S = 3.0
MAX_TOOL_ROUNDS = 3
MAX_TOOL_RESULT = 8000
ROUTING_AT_ONCE = 16  # requests a runtime routes by capability at the same time


class Inbox(Protocol):
    """What the runtime needs of its gateway (:class:`bus.client.BusClient` has it)."""

    def messages(self, since: int = 0, limit: int = 100, wait: float = 0.0,
                 **filters: Any) -> dict[str, Any]: ...

    def ack(self, sender: str, message_id: str) -> bool: ...

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]: ...


def response_id(request: Mapping[str, Any]) -> str:
    """The id of the response to ``request``: the same for the same request, every time."""
    digest = hashlib.sha256(f"{request['from']}\n{request['id']}".encode()).hexdigest()
    return f"response-{digest[:40]}"


def prompt_of(payload: Any) -> list[dict[str, Any]]:
    """The chat messages a request asks about: ``{"prompt": TEXT}``, ``{"messages": [...]}``
    or a bare string."""
    if isinstance(payload, str):
        return [{"role": "user", "content": payload[:MAX_PROMPT_CHARS]}]
    if isinstance(payload, dict):
        if isinstance(payload.get("prompt"), str):
            return [{"role": "user", "content": payload["prompt"][:MAX_PROMPT_CHARS]}]
        chat = payload.get("messages")
        if isinstance(chat, list) and chat and all(
                isinstance(m, dict) and m.get("role") in ("user", "assistant")
                and isinstance(m.get("content"), str) for m in chat):
            return [{"role": m["role"], "content": m["content"][:MAX_PROMPT_CHARS]}
                    for m in chat]
    raise ValueError("the request's payload is not a prompt: send {\"prompt\": \"...\"}, "
                     "{\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]} or a string")


@dataclass
class Runtime:
    """One agent's runtime: its inbox (a signed client of its own gateway), its provider, its
    soul and where it writes its state."""

    agent: str
    inbox: Inbox
    provider: Provider
    soul: Callable[[], str]
    state_dir: Path
    release: str
    max_tokens: int = 256
    temperature: float | None = None
    """The sampling temperature of every answer (None: the provider's default)."""
    wait_s: float = LONG_POLL_S
    """How long one read of the inbox waits for a request (the gateway answers at once when
    one arrives)."""
    retry_s: float = 0.5
    """The pause before reading the inbox again after the gateway failed to answer."""
    stop: threading.Event = field(default_factory=threading.Event)
    status: dict[str, Any] = field(default_factory=dict)
    sleep: Callable[[float], bool] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    call_tool: Callable[[str, dict[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
    """Runs a tool through the agent's gateway: name, arguments, and the request the call is
    made for (the gateway checks that its sender may call the tool: no confused deputy)."""
    route: Callable[[str, str], dict[str, Any]] | None = None
    """Asks a healthy agent with a capability (a request with ``capability`` in its payload
    is routed, not answered by this agent's model)."""
    model_check_s: float = RuntimeSettings.model_check_s
    """Seconds without a model round trip after which an idle runtime checks its model (a
    1-token round trip); 0: never."""
    clock: Callable[[], float] = time.monotonic
    """The clock the model checks are scheduled by."""
    now: Callable[[], float] = time.time
    """Wall-clock time, for request ttls."""
    memory: MemorySettings = field(default_factory=MemorySettings)
    """How much of a conversation is sent with a prompt, and how long turns are kept."""
    handlers: Mapping[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = field(
        default_factory=dict)
    """Message types other than ``request`` this runtime takes (``work.item`` on a worker:
    :mod:`fleet.node.work.worker`): the handler's answer (if any) goes back as a
    ``response``, then the message is acknowledged. A handler returns at once."""

    on_start: Callable[[], object] | None = None
    """Run once as the loop starts, after the first model check (a worker resumes the work
    item it was on when the runtime died); what it raises is logged, the loop goes on."""

    def __post_init__(self) -> None:
        self.status = {"agent": self.agent, "state": "starting", "release": self.release,
                       "handled": 0, "errors": 0, "last_round_trip": None,
                       "model": self.provider.model, "current": None,
                       "pid": os.getpid(), "started": time.time()}
        self._model_seen = self.clock()  # when the model last answered (or was last asked)
        self._written = 0.0
        self._lock = threading.Lock()
        self._cursor = 0  # the inbox position of the last request taken in
        self._rescan = False
        self._routing: set[tuple[str, str]] = set()  # (from, id) being routed now
        self._routing_slots = threading.BoundedSemaphore(ROUTING_AT_ONCE)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when asked to stop."""
        return self.sleep(seconds) if self.sleep else self.stop.wait(seconds)

    def save(self, force: bool = False) -> None:
        """Write the state file (at most once a second unless ``force``)."""
        with self._lock:
            now = time.monotonic()
            if force or now - self._written >= 1.0:
                write_state(self.state_dir, dict(self.status))
                self._written = now

    def heartbeat(self) -> None:
        """Keep the state file fresh while a model call takes long (until stopped)."""
        while not self.stop.wait(HEARTBEAT_S):
            self.save(force=True)

    def probe(self) -> bool:
        """A live round trip; the state is ``ready`` after a good one."""
        result = round_trip(self.provider, timeout=PROBE_TIMEOUT_S)
        self._model_seen = self.clock()
        self.status["last_round_trip"] = result
        self.status["state"] = "ready" if result["ok"] else "waiting_provider"
        self.save(force=True)
        return bool(result["ok"])

    def check_due(self) -> bool:
        """Whether a ready runtime should check its model now: ``model_check_s`` seconds
        passed since the model last answered or was asked (never when it is 0)."""
        return (self.model_check_s > 0 and self.status["state"] == "ready"
                and self.clock() - self._model_seen >= self.model_check_s)

    def run(self) -> None:
        """Probe the model, then serve the inbox until stopped; while the model does not
        answer, probe it again with back-off (requests wait for it meanwhile); while it
        does, check it every ``model_check_s`` seconds it was not used."""
        self.save(force=True)
        threading.Thread(target=self.heartbeat, name="runtime-heartbeat", daemon=True).start()
        delay = 1.0
        next_probe = self.clock() + delay if not self.probe() else None
        if self.on_start is not None:
            try:
                self.on_start()
            except Exception:
                log.exception("starting %s's work failed", self.agent)
        while not self.stop.is_set():
            if next_probe is not None and self.clock() >= next_probe:
                delay = min(delay * 2, BACKOFF_MAX_S, self.model_check_s or BACKOFF_MAX_S)
                next_probe = None if self.probe() else self.clock() + delay
            elif self.check_due():
                self.probe()
            try:
                self.step()
                failed = False
            except Exception as exc:  # the gateway restarting, a bus error: try again soon
                self.status["gateway_error"] = f"{type(exc).__name__}: {exc}"[:300]
                self.rescan()
                failed = True
            if self.status["state"] == "ready":
                next_probe, delay = None, 1.0
            elif next_probe is None:
                next_probe = self.clock() + delay
            self.save()
            if self.wait(self.retry_s if failed else 0):
                return

    def step(self) -> int:
        """Take the unacknowledged requests after the runtime's cursor (waiting up to
        ``wait_s`` for one: a long poll, so a request is taken within milliseconds): answer
        each in turn, or start routing it by capability beside the loop; how many were
        taken."""
        with self._lock:
            if self._rescan:
                self._cursor, self._rescan = 0, False
        filters = {} if self.handlers else {"type": "request"}
        page = self.inbox.messages(unacked=1, limit=20, wait=self.wait_s, since=self._cursor,
                                   **filters)
        count = 0
        for request in page["messages"]:
            if self.stop.is_set():
                break
            if request.get("type") in self.handlers:
                self.dispatch(request)
            elif request.get("type") != "request":
                pass  # a response, broadcast or alert: read by whoever waits for it
            elif self.routes(request):
                self.start_routing(request)
            elif not self.handle(request):
                break
            self._cursor = max(self._cursor, int(request.get("seq") or 0))
            count += 1
        return count

    def dispatch(self, message: dict[str, Any]) -> None:
        """Hand ``message`` to the handler of its type, send its answer, acknowledge it."""
        answer = self.handlers[message["type"]](message)
        if answer is not None:
            self.inbox.send(message.get("reply_to") or message["from"], "response",
                            {**answer, "agent": self.agent}, id=response_id(message),
                            correlation_id=message.get("correlation_id") or message["id"])
        self.inbox.ack(message["from"], message["id"])

    def rescan(self) -> None:
        """Read the inbox from its start at the next step: a request taken in was not
        acknowledged."""
        with self._lock:
            self._rescan = True

    def routes(self, request: dict[str, Any]) -> bool:
        """Whether ``request`` is routed to another agent by capability."""
        payload = request["payload"]
        return (self.route is not None and isinstance(payload, dict)
                and isinstance(payload.get("capability"), str))

    def start_routing(self, request: dict[str, Any]) -> None:
        """Route ``request`` in a thread of its own (at most :data:`ROUTING_AT_ONCE` at a
        time), so the runtime goes on answering while the chosen agent thinks. A request
        already being routed is not started twice."""
        key = (request["from"], request["id"])
        with self._lock:
            if key in self._routing:
                return
            self._routing.add(key)
        self._routing_slots.acquire()

        def route() -> None:
            try:
                self.reply(request)
            except Exception as exc:  # the gateway restarting: taken in again later
                self.status["gateway_error"] = f"{type(exc).__name__}: {exc}"[:300]
                self.rescan()
            finally:
                with self._lock:
                    self._routing.discard(key)
                self._routing_slots.release()

        threading.Thread(target=route, name=f"route-{request['id']}"[:60], daemon=True).start()

    def handle(self, request: dict[str, Any]) -> bool:
        """Answer one request, then acknowledge it (False when stopped before an answer)."""
        self.status["current"] = request["id"]
        self.save(force=True)
        if not self.reply(request):
            return False
        self.status["current"] = None
        self.save(force=True)
        return True

    def reply(self, request: dict[str, Any]) -> bool:
        """Queue the response to ``request``, then acknowledge it (False when stopped
        before an answer)."""
        payload = self.answer(request)
        if payload is None:
            return False
        self.inbox.send(request.get("reply_to") or request["from"], "response", payload,
                        id=response_id(request),
                        correlation_id=request.get("correlation_id") or request["id"])
        self.inbox.ack(request["from"], request["id"])
        with self._lock:
            self.status["handled"] += 1
        return True

    def answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The response payload for ``request``; None when stopped while waiting. A request
        in a conversation whose turn is stored already (handled before a crash) gets the
        stored payload, expired or not: what was remembered is what is sent."""
        try:
            conversation = conversation_of(request["payload"])
        except ValueError as exc:
            return self.error(str(exc))
        if conversation is not None and not self.routes(request):
            stored = stored_reply(self.state_dir, request["from"], request["id"])
            if stored is not None:
                return stored
        if expired(request, now=self.now()):
            return self.error(f"request {request['id']!r} expired (ttl {request['ttl']} s) "
                              "before it was answered: the model was not asked")
        try:
            chat = prompt_of(request["payload"])
        except ValueError as exc:
            return self.error(str(exc))
        if self.routes(request):
            return self.routed(request["payload"]["capability"], chat[-1]["content"])
        history = [] if conversation is None else recent(
            self.state_dir, request["from"], conversation, self.memory, now=self.now())
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.soul()},
                                          *history, *chat]
        used: list[dict[str, Any]] = []
        done: Completion | None = None
        for round_number in range(MAX_TOOL_ROUNDS + 1):
            found = self.complete(request, messages, tools=round_number < MAX_TOOL_ROUNDS)
            if not isinstance(found, Completion):
                return found
            done = found
            if not (done.tool_calls and self.tools and round_number < MAX_TOOL_ROUNDS):
                break
            messages.append({"role": "assistant", "content": done.text or None,
                             "tool_calls": done.tool_calls})
            for call in done.tool_calls:
                result = self.use_tool(call, request)
                used.append({"tool": result.get("tool"), "exit": result.get("exit"),
                             "error": result.get("error")})
                messages.append({"role": "tool", "tool_call_id": call.get("id"),
                                 "content": json.dumps(result)[:MAX_TOOL_RESULT]})
        assert done is not None
        answer = {"text": done.text, "model": self.provider.model, "tokens": done.tokens,
                  "prompt_tokens": done.prompt_tokens,
                  "latency_ms": round(done.latency_s * 1000, 1),
                  "finish_reason": done.finish_reason, "agent": self.agent}
        if used:
            answer["tools_used"] = used
        if conversation is not None:
            return store_turn(self.state_dir, request["from"], conversation, request["id"],
                              chat[-1]["content"], answer, self.memory, now=self.now())
        return answer

    def complete(self, request: dict[str, Any], messages: list[dict[str, Any]],
                 tools: bool) -> Completion | dict[str, Any] | None:
        """One model call, retried with back-off while the provider is unreachable: the
        completion, an error payload, or None when stopped."""
        delay = 1.0
        while True:
            left = self.time_left(request)
            if left is not None and left <= 0:
                return self.error(f"request {request['id']!r} expired (ttl {request['ttl']} "
                                  "s) before the model answered")
            try:
                done = self.provider.chat(messages, max_tokens=self.max_tokens,
                                          tools=self.tools if tools else None,
                                          temperature=self.temperature,
                                          timeout=min(self.provider.timeout, left)
                                          if left is not None else None)
                self._model_seen = self.clock()
            except ProviderError as exc:
                self.record(None, str(exc))
                if not exc.retryable:
                    return self.error(f"the model provider refused: {exc}")
                self.status["state"] = "waiting_provider"
                self.save(force=True)
                if self.wait(delay):
                    return None
                delay = min(delay * 2, BACKOFF_MAX_S)
                if expired(request, now=self.now()):
                    return self.error(f"request {request['id']!r} expired (ttl "
                                      f"{request['ttl']} s) while the model was unreachable")
                continue
            if not answered_tokens(done):
                self.record(None, f"the model answered no tokens (finish_reason "
                                  f"{done.finish_reason!r})")
                return self.error(f"the model answered no tokens (finish_reason "
                                  f"{done.finish_reason!r})")
            self.record(done, None)
            return done

    def time_left(self, request: Mapping[str, Any]) -> float | None:
        """Seconds until ``request``'s ttl runs out (None: it has none)."""
        if request.get("ttl") is None:
            return None
        return float(request["ttl"]) - (self.now() - self.sent_at(request))

    @staticmethod
    def sent_at(request: Mapping[str, Any]) -> float:
        """The Unix time ``request`` was sent (its ``timestamp``)."""
        sent = parse_timestamp(request["timestamp"])
        return sent.timestamp() if sent is not None else 0.0

    def routed(self, capability: str, prompt: str) -> dict[str, Any]:
        """The answer of a healthy agent with ``capability`` (routed over the bus)."""
        assert self.route is not None
        try:
            return self.route(capability, prompt)
        except Exception as exc:  # no such agent, none healthy, no answer in time
            return self.error(f"could not route the request by capability "
                              f"{capability!r}: {exc}")

    def use_tool(self, call: dict[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
        """Run a tool the model asked for (OpenAI tool-call format) through the agent's own
        gateway, on behalf of ``request``'s sender; the result (or why it could not run, or
        was refused) goes back to the model."""
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        try:
            args = json.loads(function.get("arguments") or "{}") if function else None
        except (TypeError, ValueError):
            args = None
        if not isinstance(name, str) or not isinstance(args, dict):
            return {"tool": name, "error": "the tool call has no name or no JSON arguments"}
        if self.call_tool is None:
            return {"tool": name, "error": "this runtime runs no tools"}
        try:
            return {"tool": name, **self.call_tool(name, args, request)}
        except Exception as exc:  # refused (4xx), timed out (504), gateway down
            return {"tool": name, "error": str(exc)[:500]}

    def record(self, done: Completion | None, error: str | None) -> None:
        """Keep the last model round trip for /health."""
        self.status["last_round_trip"] = {
            "ok": error is None, "at": time.time(), "error": error,
            "latency_ms": round(done.latency_s * 1000, 1) if done else None,
            "tokens": done.tokens if done else 0}
        if error is None:
            self.status["state"] = "ready"

    def error(self, message: str) -> dict[str, Any]:
        self.status["errors"] += 1
        return {"error": message, "agent": self.agent}
