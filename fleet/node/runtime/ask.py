"""Work routed by capability: ask a healthy agent that declares a capability, wait for its
model's answer.

The request goes from the asker's gateway (an orchestrator by default) to one healthy agent
with the capability, picked at random among them so that load spreads. While waiting, the
chosen agent's health is watched; if it goes down the same request (same correlation id) is
sent once to another healthy agent. The first response is the answer: the asker never
returns or prints two. Each request carries a ttl that runs out when the asker stops waiting,
so a runtime drops a request nobody waits for without asking its model. A request that
continues a conversation goes to the same healthy agent every time (rendezvous hashing of
the conversation id), since each agent remembers its own conversations. "Healthy" is the
agent's own ``/health`` verdict (:func:`fleet.node.runtime.state.runtime_ready`).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bus.client import LONG_POLL_S, BusClient
from fleet.core.bounded_http import AnswerError, get
from fleet.core.errors import BusError
from fleet.core.registry import Agent, Registry
from fleet.node.runtime.memory import CONVERSATION_RULE, is_conversation
from fleet.node.runtime.state import runtime_ready

HEALTH_TIMEOUT_S = 5.0
WATCH_EVERY_S = 2.0
DOWN_AFTER = 2
"""Failed health checks in a row before the chosen agent counts as dead."""


class AskError(BusError):
    """No agent could take the request, or no answer came in time."""


@dataclass(frozen=True)
class Answer:
    """The response: who answered, its payload, the correlation id and the agents asked."""

    agent: str
    payload: Any
    correlation_id: str
    asked: tuple[str, ...]


def thinks(agent: Agent, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether ``agent`` is healthy and its runtime ready to answer (its /health says so,
    read within bounds: :mod:`fleet.core.bounded_http`)."""
    try:
        answer = get(agent.health_endpoint, timeout)
        body = answer.json() if answer.status == 200 else {}
    except AnswerError:
        return False
    return runtime_ready(body)


def candidates(registry: Registry, capability: str, exclude: tuple[str, ...] = (),
               healthy: Callable[[Agent], bool] = thinks) -> list[Agent]:
    """Healthy agents with a runtime that declare ``capability``, in random order."""
    found = [agent for agent in registry.with_capability(capability)
             if agent.runtime != "none" and agent.name not in exclude]
    random.shuffle(found)
    return [agent for agent in found if healthy(agent)]


def ask(registry: Registry, keys: Mapping[str, str], capability: str, prompt: str,
        sender: str | None = None, timeout: float = 120.0,
        healthy: Callable[[Agent], bool] = thinks, conversation: str | None = None) -> Answer:
    """Send ``prompt`` to a healthy agent with ``capability``; its first response. The asker
    asks itself only when no other agent can answer. ``conversation``: the id of the
    conversation the prompt continues (the answering agent remembers its earlier turns)."""
    sender = sender or (registry.by_role("orchestrator") or list(registry))[0].name
    with BusClient.for_agent(registry, sender, keys) as client:
        return ask_as(client, registry, capability, prompt, timeout, healthy, ask_self=True,
                      conversation=conversation)


def ask_as(client: BusClient, registry: Registry, capability: str, prompt: str,
           timeout: float = 120.0, healthy: Callable[[Agent], bool] = thinks,
           ask_self: bool = False, conversation: str | None = None) -> Answer:
    """:func:`ask` through ``client``, the asking agent's own signed client (an agent's
    runtime routing a request it was given by capability, never to itself). ``ask_self``:
    the asker is asked when it is the only healthy agent with the capability."""
    sender = client.agent
    if conversation is not None and not is_conversation(conversation):
        raise AskError(f"conversation {conversation!r} is not a conversation id: "
                       f"{CONVERSATION_RULE}", hint="Name the conversation with printable "
                                                    "characters only.")
    payload: dict[str, Any] = {"prompt": prompt}
    if conversation is not None:
        payload["conversation"] = conversation
    if not registry.with_capability(capability):
        raise AskError(f"no agent declares capability {capability!r}",
                       hint="See `fleet find --capability NAME`.")
    first = candidates(registry, capability, (sender,), healthy)
    if not first and ask_self:
        first = [agent for agent in candidates(registry, capability, (), healthy)
                 if agent.name == sender]
    if conversation is not None:  # the same agent for the same conversation while it is up
        first.sort(key=lambda agent: hashlib.sha256(
            f"{conversation}\n{agent.name}".encode()).hexdigest())
    if not first:
        raise AskError(f"no healthy agent with capability {capability!r} can answer now",
                       hint="Check `fleet status`: their runtimes must be ready.")
    correlation = str(uuid.uuid4())
    asked = [first[0].name]
    deadline = time.monotonic() + timeout
    client.send(asked[0], "request", payload, id=f"{correlation}-1",
                correlation_id=correlation, reply_to=sender, ttl=math.ceil(timeout))
    misses, next_watch = 0, time.monotonic() + WATCH_EVERY_S
    while time.monotonic() < deadline:
        found = client.messages(type="response", correlation_id=correlation, limit=1,
                                wait=min(LONG_POLL_S, max(0.0, deadline - time.monotonic())))
        if found["messages"]:
            message: dict[str, Any] = found["messages"][0]
            client.ack(message["from"], message["id"])
            return Answer(message["from"], message["payload"], correlation, tuple(asked))
        if len(asked) == 1 and time.monotonic() >= next_watch:
            next_watch = time.monotonic() + WATCH_EVERY_S
            misses = 0 if healthy(registry.get(asked[0])) else misses + 1
            if misses >= DOWN_AFTER:
                others = candidates(registry, capability, (sender, asked[0]), healthy)
                if others:
                    asked.append(others[0].name)
                    client.send(asked[1], "request", payload,
                                id=f"{correlation}-2", correlation_id=correlation,
                                reply_to=sender,
                                ttl=max(1, math.ceil(deadline - time.monotonic())))
    raise AskError(f"no answer to request {correlation} from {', '.join(asked)} within "
                   f"{timeout:g} s", hint="Check `fleet status` and the agents' runtimes.")
