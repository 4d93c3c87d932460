"""The built-in runtime against real gateways and a mock OpenAI-format provider on loopback:
answers with the request's correlation id and the soul as system prompt, answers once across
a crash between reply and acknowledgement, waits out provider outages, answers an expired
request with an error."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.control.secrets import BUS_KEY
from fleet.core.registry import load_registry
from fleet.node.runtime.loop import Runtime, response_id
from fleet.node.runtime.service import from_env
from fleet.node.runtime.state import STABLE_S, read_state, runtime_problems
from tests.bus.conftest import Gateway
from tests.runtime.conftest import KEYS, MockProvider
from tests.waiting import wait_for


def runtime_of(registry: Path, state: Path, provider: MockProvider, agent: str = "bezalel",
               **changes: Any) -> Runtime:
    """An agent's runtime, built from the environment its unit would give it."""
    env = {"FLEET_REGISTRY": str(registry), "FLEET_AGENT": agent,
           PRIVATE_KEY_ENV: KEYS[agent], "FLEET_STATE_DIR": str(state),
           "FLEET_SOUL": str(registry.parent / "souls" / f"{agent}.md"),
           "MOCK_API_KEY": provider.key}
    runtime = from_env(env)
    for name, value in changes.items():
        setattr(runtime, name, value)
    return runtime


def responses(ezra: BusClient, correlation: str) -> list[dict[str, Any]]:
    return list(ezra.messages(type="response", correlation_id=correlation)["messages"])


def settled_bus(worker: BusClient) -> dict[str, Any] | None:
    """``worker``'s bus stats once nothing more can reach an asker from its gateway, else None:
    every request in its inbox acknowledged (the runtime queues its response first), then its
    outbox empty (every queued response delivered: none in flight or waiting for a retry).
    Read in that order, so a response queued between the two reads is still counted. A
    runtime still running must also have nothing in hand (the caller checks)."""
    if worker.messages(type="request", unacked=1)["messages"]:
        return None
    stats: dict[str, Any] = worker.stats()
    return stats if stats["outbox_depth"] == 0 else None


def test_request_is_answered_by_the_model_with_its_correlation_id(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
            answer = ezra.request("bezalel", {"prompt": "What is 2+2?"}, timeout=30,
                                  correlation_id="corr-42")
    finally:
        runtime.stop.set()
        thread.join(10)
    assert answer["correlation_id"] == "corr-42"
    assert answer["from"] == "bezalel"
    assert answer["payload"]["text"] == "four"
    assert answer["payload"]["tokens"] == 1
    assert answer["payload"]["prompt_tokens"] == 5  # the provider's usage.prompt_tokens
    asked = provider.requests[-1]
    assert asked["messages"] == [
        {"role": "system", "content": "You are bezalel. Answer briefly.\n"},
        {"role": "user", "content": "What is 2+2?"}]
    assert "temperature" not in asked  # none set: the provider's default
    state = read_state(gateways["bezalel"].state)
    assert state is not None and state["handled"] == 1
    assert state["last_round_trip"]["ok"] is True
    with BusClient.for_agent(load_registry(registry), "bezalel", KEYS) as bezalel:
        assert bezalel.messages(type="request", unacked=1)["messages"] == []


class CrashAfterReply(Exception):
    """Stands for the runtime dying between queueing the reply and the acknowledgement."""


def test_crash_between_reply_and_ack_answers_exactly_once(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    fleet = load_registry(registry)
    with BusClient.for_agent(fleet, "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "hi"}, id="req-1", correlation_id="c-1",
                  reply_to="ezra")
        first = runtime_of(registry, gateways["bezalel"].state, provider)
        request = wait_for(lambda: first.inbox.messages(type="request",
                                                        unacked=1)["messages"])[0]

        def crash(sender: str, message_id: str) -> bool:
            raise CrashAfterReply

        first.inbox.ack = crash  # type: ignore[method-assign]
        with pytest.raises(CrashAfterReply):
            first.handle(request)
        second = runtime_of(registry, gateways["bezalel"].state, provider)
        assert second.step() == 1  # handled again after the "restart"
        assert second.step() == 0  # and acknowledged this time
        with gateways["bezalel"].client() as bezalel:
            sent = wait_for(lambda: settled_bus(bezalel), what="bezalel's bus to settle")
        found = responses(ezra, "c-1")
    assert len(found) == 1, found
    assert sent["delivered"] == 1  # the second answer was the same message, queued once
    assert found[0]["id"] == response_id(request)
    assert len(provider.requests) == 2  # the model was asked twice, answered once


def test_provider_outage_waits_and_answers_after_it_returns(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    provider.failures = [503, 502, 503]
    runtime = runtime_of(registry, gateways["bezalel"].state, provider,
                         sleep=lambda seconds: False)  # no real back-off waits in a unit test
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "hi"}, correlation_id="c-2", reply_to="ezra")
        wait_for(lambda: runtime.inbox.messages(type="request", unacked=1)["messages"])
        assert runtime.step() == 1
        answer = wait_for(lambda: responses(ezra, "c-2"))[0]
    assert answer["payload"]["text"] == "four"
    assert len(provider.requests) == 4


def test_the_agents_temperature_reaches_the_provider(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    text = registry.read_text()
    registry.write_text(text.replace("    capabilities: [code]\n    provider:\n",
                                     "    capabilities: [code]\n    config: {temperature: 0}\n"
                                     "    provider:\n", 1))
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "hi"}, correlation_id="c-t", reply_to="ezra")
        wait_for(lambda: runtime.inbox.messages(type="request", unacked=1)["messages"])
        assert runtime.step() == 1
        wait_for(lambda: responses(ezra, "c-t"))
    assert provider.requests[-1]["temperature"] == 0


def test_expired_request_gets_an_error_response(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "hi"}, correlation_id="c-3", reply_to="ezra",
                  ttl=1)
        [request] = wait_for(lambda: runtime.inbox.messages(type="request",
                                                            unacked=1)["messages"])
        sent = Runtime.sent_at(request)
        runtime.now = lambda: sent + 2  # the runtime's clock: a second past the ttl
        assert runtime.step() == 1
        answer = wait_for(lambda: responses(ezra, "c-3"))[0]
    assert "expired" in answer["payload"]["error"]
    assert provider.requests == []  # the model was not asked


def test_wrong_key_is_refused_without_retries_and_shows_in_state(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    provider.key = "sk-another-key-99999999"  # the agent's key is now the wrong one
    assert runtime.probe() is False
    state = read_state(gateways["bezalel"].state)
    assert state is not None
    settled = state["started"] + STABLE_S + 1  # up long enough to count
    problems = runtime_problems(state, "builtin", runtime.release, now=settled)
    assert len(problems) == 1 and "HTTP 401" in problems[0]
    assert runtime_problems(None, "builtin", "r")[0].startswith(
        "runtime has written no state file (runtime.json in its state dir)")
    stale = {**state, "heartbeat": settled - 60}
    assert "not running" in runtime_problems(stale, "builtin", runtime.release, now=settled)[0]


def ask_to_count_words(fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
                       asker: str, reply: str) -> dict[str, Any]:
    """``asker`` asks bezalel's runtime a question its model answers by calling bezalel's
    ``words`` tool (request id ``words-1``); the response."""
    registry, gateways = fleet_pair
    provider.script = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "words", "arguments": '{"text": "a b c"}'}}]}]
    provider.reply = reply
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    with BusClient.for_agent(load_registry(registry), asker, KEYS) as client:
        client.send("bezalel", "request", {"prompt": "How many words in 'a b c'?"},
                    id="words-1", correlation_id="c-tool", reply_to=asker)
        wait_for(lambda: runtime.inbox.messages(type="request", unacked=1)["messages"])
        assert runtime.step() == 1
        return dict(wait_for(lambda: responses(client, "c-tool"))[0])


def test_runtime_runs_its_own_tool_when_the_model_asks(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, _ = fleet_pair
    answer = ask_to_count_words(fleet_pair, provider, "ezra", "three words")
    assert answer["payload"]["text"] == "three words"
    assert answer["payload"]["tools_used"] == [{"tool": "words", "exit": 0, "error": None}]
    first, second = provider.requests
    assert first["tools"][0]["function"]["name"] == "words"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert '{\\"words\\": 3}' in tool_message["content"]
    with BusClient.for_agent(load_registry(registry), "bezalel", KEYS) as bezalel:
        [call] = bezalel.call("GET", "/tool-calls")["calls"]
    assert (call["caller"], call["on_behalf_of"], call["tool"], call["outcome"]) == (
        "bezalel", "ezra", "words", "ok")
    listed = subprocess.run(
        [sys.executable, "-c", "from fleet.cli import main; main()", "--registry",
         str(registry), "tools", "calls", "bezalel"], capture_output=True, text=True,
        timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "FLEET_AGENT": "bezalel", BUS_KEY: KEYS["bezalel"]})
    assert listed.returncode == 0, listed.stderr
    assert re.fullmatch(r"#1 \S+Z bezalel for ezra -> words ok exit=0 \d+ ms "
                        r"\{\"text\": \"a b c\"\}\n", listed.stdout), listed.stdout


def test_a_tool_runs_for_a_request_only_when_its_sender_may_call_it(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    """allegro may not call bezalel's tool, and asking bezalel's runtime to call it for it
    does not help (no confused deputy): the record names bezalel and allegro."""
    registry, _ = fleet_pair
    answer = ask_to_count_words(fleet_pair, provider, "allegro", "I could not count them")
    [used] = answer["payload"]["tools_used"]
    assert used["exit"] is None and "HTTP 403: 'allegro' may not call tool 'words'" in used["error"]
    with BusClient.for_agent(load_registry(registry), "bezalel", KEYS) as bezalel:
        [call] = bezalel.call("GET", "/tool-calls")["calls"]
    assert (call["caller"], call["on_behalf_of"], call["request_id"], call["outcome"],
            call["status"]) == ("bezalel", "allegro", "words-1", "refused", 403)
