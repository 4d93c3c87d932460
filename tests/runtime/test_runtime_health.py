"""The built-in runtime keeps its health true: an idle runtime checks its model on a schedule
(so /health turns 503 when the model server goes away, and 200 when it is back, without a
request), an answer with no tokens is an error, a request nobody waits for any more is dropped
without a model call, and ``fleet ask`` asks the asker itself when it is the only agent with
the capability."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bus.client import BusClient
from fleet.core.registry import load_registry
from fleet.node.runtime.ask import AskError, ask
from fleet.node.runtime.loop import Runtime
from fleet.node.runtime.state import STABLE_S
from tests.bus.conftest import Gateway
from tests.runtime.conftest import KEYS, MockProvider, write_registry
from tests.runtime.test_runtime import responses, runtime_of
from tests.waiting import wait_for

CHECK_S = 1.0


@pytest.fixture
def started() -> Iterator[list[Runtime]]:
    """Runtimes run in threads by the test, stopped at its end."""
    found: list[Runtime] = []
    try:
        yield found
    finally:
        for runtime in found:
            runtime.stop.set()


def run(runtime: Runtime, started: list[Runtime]) -> Runtime:
    """Run ``runtime`` in a thread, as if its process had been up a while (past the
    stability window /health asks for)."""
    runtime.status["started"] = time.time() - STABLE_S - 60
    threading.Thread(target=runtime.run, daemon=True).start()
    started.append(runtime)
    return runtime


def health(url: str) -> tuple[int, dict[str, Any]]:
    with requests.get(url, timeout=10) as answer:
        return answer.status_code, answer.json()


def test_an_idle_runtime_checks_its_model_and_health_follows(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        started: list[Runtime]) -> None:
    registry, gateways = fleet_pair
    url = load_registry(registry).get("bezalel").health_endpoint
    run(runtime_of(registry, gateways["bezalel"].state, provider, model_check_s=CHECK_S),
        started)
    wait_for(lambda: health(url)[0] == 200, 20, "bezalel healthy")
    provider.down = True
    went_down = time.monotonic()
    body = wait_for(lambda: (found := health(url))[0] == 503 and found[1], 15, "a 503")
    assert time.monotonic() - went_down < CHECK_S + 3  # within the interval (and a probe)
    assert body["runtime"]["state"] == "waiting_provider" and not body["runtime"]["ready"]
    assert any("runtime is waiting_provider" in problem and "HTTP 503" in problem
               for problem in body["problems"]), body["problems"]
    provider.down = False
    wait_for(lambda: health(url)[0] == 200, 15, "bezalel healthy again")


def test_no_model_checks_when_they_are_off(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    clock = [time.monotonic()]  # not before the runtime saw its model (built on monotonic)
    runtime = runtime_of(registry, gateways["bezalel"].state, provider, model_check_s=0.0,
                         clock=lambda: clock[0])
    runtime.status["state"] = "ready"
    clock[0] += 10_000.0
    assert runtime.check_due() is False
    runtime.model_check_s = 60.0
    assert runtime.check_due() is True
    clock[0] = runtime._model_seen + 59
    assert runtime.check_due() is False


def test_the_model_check_interval_comes_from_the_agent_config(tmp_path: Path,
                                                              provider: MockProvider) -> None:
    registry = write_registry(tmp_path, provider.url)
    text = registry.read_text().replace("    capabilities: [code]\n    provider:\n",
                                        "    capabilities: [code]\n    config: {model_check_s: "
                                        "7, max_tokens: 9}\n    provider:\n", 1)
    registry.write_text(text)
    runtime = runtime_of(registry, tmp_path / "state", provider)
    assert (runtime.model_check_s, runtime.max_tokens) == (7.0, 9)
    default = runtime_of(registry, tmp_path / "state", provider, agent="allegro")
    assert (default.model_check_s, default.max_tokens) == (60.0, 256)


def test_an_answer_with_no_tokens_is_an_error(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    provider.reply, provider.tokens = "", 0
    runtime = runtime_of(registry, gateways["bezalel"].state, provider)
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"prompt": "hi"}, correlation_id="c-empty",
                  reply_to="ezra")
        wait_for(lambda: runtime.inbox.messages(type="request", unacked=1)["messages"])
        assert runtime.step() == 1
        answer = wait_for(lambda: responses(ezra, "c-empty"))[0]
    assert answer["payload"]["error"] == "the model answered no tokens (finish_reason 'stop')"
    assert "text" not in answer["payload"]
    assert runtime.status["errors"] == 1
    assert runtime.status["last_round_trip"]["ok"] is False


def test_a_request_abandoned_by_fleet_ask_is_dropped_without_a_model_call(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider) -> None:
    registry, gateways = fleet_pair
    fleet = load_registry(registry)
    with pytest.raises(AskError, match=r"no answer to request .* within 1 s"):
        ask(fleet, KEYS, "code", "What is 2+2?", sender="ezra", timeout=1.0,
            healthy=lambda agent: agent.name == "bezalel")  # no runtime answers meanwhile
    later = time.time() + 2  # the runtime comes back after the asker gave up
    runtime = runtime_of(registry, gateways["bezalel"].state, provider, now=lambda: later)
    [request] = wait_for(lambda: runtime.inbox.messages(type="request", unacked=1)["messages"])
    assert request["ttl"] == 1  # the asker's own timeout
    assert runtime.step() == 1
    with BusClient.for_agent(fleet, "ezra", KEYS) as ezra:
        answer = wait_for(lambda: responses(ezra, request["correlation_id"]))[0]
    assert "expired" in answer["payload"]["error"], answer
    assert provider.requests == []  # the model was not asked


def test_fleet_ask_asks_the_asker_when_it_is_the_only_agent_with_the_capability(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        started: list[Runtime]) -> None:
    registry, gateways = fleet_pair
    fleet = load_registry(registry)
    run(runtime_of(registry, gateways["bezalel"].state, provider), started)
    wait_for(lambda: health(fleet.get("bezalel").health_endpoint)[0] == 200, 20, "bezalel")
    # allegro declares the capability too, but runs no runtime: bezalel is the only one
    answer = ask(fleet, KEYS, "code", "What is 2+2?", sender="bezalel", timeout=30)
    assert (answer.agent, answer.asked) == ("bezalel", ("bezalel",))
    assert answer.payload["text"] == "four"
