"""``fleet ask``: a request routed by capability to a healthy thinking agent, its answer
printed; re-routed once when the chosen agent dies mid-request, answered once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.control.status import OK, probe_health, round_trip_ms
from fleet.core.registry import load_registry
from fleet.node.runtime.ask import AskError, ask, candidates
from fleet.node.runtime.loop import Runtime
from tests.bus.conftest import FAST_RETRIES, Gateway
from tests.runtime.conftest import KEYS, MockProvider, write_registry
from tests.runtime.test_runtime import runtime_of, settled_bus
from tests.waiting import wait_for


class Running:
    """Runtimes in threads, stopped at the end."""

    def __init__(self) -> None:
        self.threads: list[tuple[Runtime, threading.Thread]] = []

    def start(self, runtime: Runtime) -> Runtime:
        """Run ``runtime`` as if its process had been up a minute (past the stability window
        /health asks for before the agent counts)."""
        runtime.status["started"] = time.time() - 60
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        self.threads.append((runtime, thread))
        return runtime

    def stop(self) -> None:
        for runtime, _ in self.threads:
            runtime.stop.set()


@pytest.fixture
def running() -> Iterator[Running]:
    found = Running()
    try:
        yield found
    finally:
        found.stop()


def wait_ready(runtime: Runtime) -> None:
    wait_for(lambda: runtime.status["state"] == "ready", 20,
             lambda: f"{runtime.agent}'s runtime to be ready: {runtime.status}")


def test_fleet_ask_prints_the_answer_of_an_agent_with_the_capability(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        running: Running) -> None:
    registry, gateways = fleet_pair
    for name in ("bezalel", "allegro"):
        wait_ready(running.start(runtime_of(registry, gateways[name].state, provider, name)))
    secrets = registry.parent / "secrets.json"  # the operator's secrets file: agents' keys
    secrets.write_text(json.dumps({"agents": {name: {PRIVATE_KEY_ENV: key}
                                              for name, key in KEYS.items()}}))
    secrets.chmod(0o600)
    env = {"FLEET_SECRETS": str(secrets), "PATH": "/usr/bin:/bin"}
    answered = set()
    for _ in range(6):
        done = subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                               "--registry", str(registry), "ask", "--capability", "code",
                               "--json", "What is 2+2?"], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["payload"]["text"] == "four"
        answered.add(answer["agent"])
        with gateways["ezra"].client() as asker:  # the response it printed, as the bus has it
            (response,) = asker.messages(type="response",
                                         correlation_id=answer["correlation_id"])["messages"]
        assert (response["from"], response["correlation_id"], response["payload"]) == (
            answer["agent"], answer["correlation_id"], answer["payload"])
        assert answer["asked"] == [answer["agent"]]  # routed to one agent with the capability
    assert answered <= {"bezalel", "allegro"}
    registry_ = load_registry(registry)
    picked = {candidates(registry_, "code", ("ezra",), lambda agent: True)[0].name
              for _ in range(200)}
    assert picked == {"bezalel", "allegro"}  # load spread (2**-199 chance of a false fail)
    plain = subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                            "--registry", str(registry), "ask", "-c", "code", "hi"],
                           capture_output=True, text=True, env=env, timeout=120, check=False)
    assert plain.returncode == 0 and plain.stdout in ("bezalel: four\n", "allegro: four\n")
    with pytest.raises(AskError, match="no agent declares capability 'cooking'"):
        ask(load_registry(registry), KEYS, "cooking", "hi")


def test_ask_reroutes_once_when_the_chosen_agent_dies(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        running: Running) -> None:
    registry, gateways = fleet_pair
    bezalel = running.start(runtime_of(registry, gateways["bezalel"].state, provider))
    wait_ready(bezalel)  # allegro's runtime is not running yet: bezalel is the one asked
    provider.hold = threading.Event()
    result: dict[str, object] = {}

    def asker() -> None:
        try:
            result["answer"] = ask(load_registry(registry), KEYS, "code", "hi", timeout=60)
        except Exception as exc:  # named by the assertion below, not lost with the thread
            result["error"] = exc

    asking = threading.Thread(target=asker)
    asking.start()
    wait_for(lambda: bezalel.status["current"] is not None, 20,
             "bezalel's runtime to take the request")
    gateways["bezalel"].kill()  # bezalel dies mid-request
    bezalel.stop.set()
    allegro = runtime_of(registry, gateways["allegro"].state, provider, "allegro")
    provider.hold.set()
    running.start(allegro)
    asking.join(90)  # longer than the ask's own timeout: it has answered or raised by then
    assert "answer" in result, f"no answer: {result.get('error')!r}; bezalel {bezalel.status}"
    answer = result["answer"]
    assert answer.agent == "allegro"  # type: ignore[attr-defined]
    assert answer.asked == ("bezalel", "allegro")  # type: ignore[attr-defined]
    assert answer.payload["text"] == "four"  # type: ignore[attr-defined]


def test_a_runtime_routes_a_request_by_capability_over_the_bus(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        running: Running) -> None:
    registry, gateways = fleet_pair
    wait_ready(running.start(runtime_of(registry, gateways["allegro"].state, provider,
                                        "allegro")))
    bezalel = runtime_of(registry, gateways["bezalel"].state, provider)
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"capability": "code", "prompt": "What is 2+2?"},
                  correlation_id="c-routed", reply_to="ezra")
        wait_for(lambda: bezalel.inbox.messages(type="request", unacked=1)["messages"], 20,
                 "the request in bezalel's inbox")
        assert bezalel.step() == 1
        found = wait_for(lambda: ezra.messages(type="response", correlation_id="c-routed")[
            "messages"], 20, "the routed response")
    payload = found[0]["payload"]
    assert (payload["text"], payload["routed_to"], payload["routed_by"]) == (
        "four", "allegro", "bezalel")  # bezalel does not route to itself
    assert [request["messages"][-1]["content"] for request in provider.requests][-1] == \
        "What is 2+2?"


def test_a_runtime_answers_other_requests_while_it_routes_one(
        fleet_pair: tuple[Path, dict[str, Gateway]], provider: MockProvider,
        running: Running) -> None:
    """Routing waits on another agent's model: the runtime answers the requests behind it
    meanwhile, and each gets exactly one response."""
    registry, gateways = fleet_pair
    released = threading.Event()
    routed_calls: list[str] = []

    def slow_route(capability: str, prompt: str) -> dict[str, Any]:
        routed_calls.append(prompt)
        assert released.wait(30)
        return {"text": "from afar", "routed_to": "allegro", "routed_by": "bezalel"}

    bezalel = runtime_of(registry, gateways["bezalel"].state, provider, route=slow_route)
    wait_ready(running.start(bezalel))
    with BusClient.for_agent(load_registry(registry), "ezra", KEYS) as ezra:
        ezra.send("bezalel", "request", {"capability": "code", "prompt": "Route me."},
                  correlation_id="c-slow", reply_to="ezra")
        wait_for(lambda: routed_calls, what="the routed request to start")
        plain = ezra.request("bezalel", {"prompt": "What is 2+2?"}, timeout=20,
                             correlation_id="c-plain")
        assert plain["payload"]["text"] == "four"
        assert not ezra.messages(type="response", correlation_id="c-slow")["messages"]
        released.set()
        routed = wait_for(lambda: ezra.messages(type="response", correlation_id="c-slow")[
            "messages"], what="the routed response")

        def idle() -> bool:  # nothing in hand: no request being answered, none being routed
            return bezalel.status["current"] is None and not bezalel._routing

        with gateways["bezalel"].client() as worker:
            wait_for(lambda: idle() and settled_bus(worker), what="bezalel to settle")
        responses = ezra.messages(type="response")["messages"]
    assert routed[0]["payload"]["text"] == "from afar"
    assert sorted(m["correlation_id"] for m in responses) == ["c-plain", "c-slow"]
    assert routed_calls == ["Route me."]
    assert bezalel.status["handled"] == 2


def test_a_thinking_status_shows_the_live_round_trip_and_a_wrong_key(
        tmp_path: Path, provider: MockProvider, running: Running) -> None:
    """``fleet status --think``'s probe (``/health?roundtrip=1``): the gateway asks the model
    itself with the key it was given; its latency, time and error are in /health."""
    registry = write_registry(tmp_path, provider.url)
    gateways = {}
    for name, key in (("bezalel", provider.key), ("allegro", "sk-wrong-KEY-0000")):
        (tmp_path / f"config-{name}.json").write_text("{}\n")
        gateways[name] = Gateway(name, registry, tmp_path / f"state-{name}", {
            **FAST_RETRIES, "MOCK_API_KEY": key,
            "FLEET_CONFIG": str(tmp_path / f"config-{name}.json"),
            "FLEET_SOUL": str(tmp_path / "souls" / f"{name}.md")}).start()
    try:
        for name in gateways:
            wait_ready(running.start(runtime_of(registry, gateways[name].state, provider, name)))
        agents = load_registry(registry)
        before = time.time()
        verdict, body = probe_health(agents.get("bezalel"), 15.0, think=True)
        assert verdict == OK, body
        live = body["runtime"]["live_round_trip"]
        assert live["ok"] is True and live["error"] is None and live["tokens"] == 1
        assert 0 < live["latency_ms"] < 15_000 and before - 1 <= live["at"] <= time.time()
        assert body["runtime"]["last_round_trip"]["ok"] is True  # the runtime's own, too
        assert round_trip_ms(body) == live["latency_ms"]  # fleet status --think's ROUND TRIP
        verdict, body = probe_health(agents.get("allegro"), 15.0, think=True)
        assert verdict.startswith("HTTP 503: live model round trip failed: "), verdict
        live = body["runtime"]["live_round_trip"]
        assert live["ok"] is False and "401" in live["error"] and live["latency_ms"] is None
        assert round_trip_ms(body) is None  # a failed live trip is no round trip time
        verdict, _ = probe_health(agents.get("allegro"), 15.0)  # without --think: its runtime
        assert verdict == OK  # (with the right key) is ready; only the live trip shows the key
    finally:
        for gateway in gateways.values():
            gateway.stop()
