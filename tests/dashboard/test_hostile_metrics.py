"""One agent's hostile ``/metrics`` (or ``/health``) costs the dashboard and ``fleet status``
that agent only: a number of 5,000 digits, 300 MiB of comment lines, an answer dripping a line
at a time forever, JSON nested 100,000 deep. The reader (:mod:`fleet.core.bounded_http`) caps
the body, has one deadline for the whole request and parses numbers within bounds."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from fleet.control.status import probe_health
from fleet.core.registry import Agent, load_registry
from fleet.dashboard.app import create_app
from fleet.dashboard.data import METRICS_TIMEOUT_S, bus_gauges
from fleet.node.runtime.ask import thinks
from tests.hostile_http import MIB, Hostile, finishes, hostile

MODES = ["huge-number", "huge-body", "drip-body", "drip-headers", "deep-json"]


def point(fleet_dir: Path, alpha: Hostile, beta: Hostile) -> Path:
    """The fixture's fleet with alpha's gateway on ``alpha`` and beta's on ``beta``."""
    registry = fleet_dir / "registry.yaml"
    lines = registry.read_text().splitlines()
    at = {"alpha": alpha.port, "beta": beta.port}
    name = ""
    for number, line in enumerate(lines):
        if line.startswith("  ") and not line.startswith("    "):
            name = line.strip().rstrip(":")
        if line.strip().startswith("gateway_port:"):
            lines[number] = f"    gateway_port: {at[name]}"
    registry.write_text("\n".join(lines) + "\n")
    return registry


@pytest.mark.parametrize("mode", MODES)
def test_one_hostile_metrics_answer_marks_only_that_agent_unknown(fleet_dir: Path,
                                                                   mode: str) -> None:
    with hostile(mode) as bad, hostile("good") as good:
        point(fleet_dir, bad, good)
        client = create_app({"REGISTRY_PATH": str(fleet_dir / "registry.yaml"),
                             "RECORDS_DIR": str(fleet_dir / "records"),
                             "REFRESH_S": 2.0}).test_client()
        done, took, answer = finishes(lambda: client.get("/dashboard/state.json"), 15)
        assert done, f"/dashboard/state.json had not answered after {took:.1f} s"
        assert getattr(answer, "status_code", answer) == 200, answer
        agents = {agent["name"]: agent for agent in answer.json["agents"]}  # type: ignore
        # the huge number is left out, the well-formed samples beside it are read
        assert (agents["alpha"]["outbox_depth"], agents["alpha"]["dead_letters"]) == (
            (2, 1) if mode == "huge-number" else (None, None))
        assert (agents["beta"]["outbox_depth"], agents["beta"]["dead_letters"]) == (2, 1)
        assert took < METRICS_TIMEOUT_S + 3
        page = client.get("/dashboard/")
        assert page.status_code == 200


def agent_at(fleet_dir: Path, server: Hostile, other: Hostile) -> Agent:
    registry = load_registry(point(fleet_dir, server, other))
    agent = registry.get("alpha")
    assert agent.health_endpoint.endswith("/health")
    return agent


@pytest.mark.parametrize("mode", MODES)
def test_the_readers_of_a_node_answer_keep_a_deadline_and_a_size_cap(fleet_dir: Path,
                                                                     mode: str) -> None:
    with hostile(mode) as bad, hostile("good") as good:
        agent = agent_at(fleet_dir, bad, good)
        readers = {"bus_gauges": lambda: bus_gauges(agent),
                   "probe_health": lambda: probe_health(agent, 1.0),
                   "thinks": lambda: thinks(agent, 1.0)}
        found: dict[str, object] = {}
        for name, read in readers.items():
            tracemalloc.start()
            try:
                done, took, found[name] = finishes(read, 10)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert done, f"{name} had not returned after {took:.1f} s"
            assert not isinstance(found[name], BaseException), f"{name} raised {found[name]!r}"
            assert took < METRICS_TIMEOUT_S + 2, f"{name} took {took:.1f} s"
            assert peak < 16 * MIB, f"{name} peaked at {peak / MIB:.0f} MiB"
    assert found["thinks"] is False
    assert found["bus_gauges"] == ({"fleet_bus_outbox_depth": 2, "fleet_bus_dead_letters": 1}
                                   if mode == "huge-number" else {})
    reason = {"huge-body": "answer over 1048576 bytes", "drip-body": "timed out",
              "drip-headers": "timed out"}.get(mode)
    if reason:
        assert found["probe_health"] == (reason, {})
    assert bus_gauges(agent) == {}  # the server is gone: unknown, not an error
