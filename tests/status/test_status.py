"""`fleet status` against real HTTP servers on loopback (SSH to a closed port fails fast)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask, jsonify
from werkzeug.serving import make_server

from fleet.cli import main
from fleet.control.expected import Expected, judge
from fleet.control.status import AgentStatus, probe_fleet
from fleet.core.registry import load_registry
from tests.ports import free_port

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDj6jp1sM1r7JSYeaG5mpVQcOg6VTFXwGhm0BK1wWf0Q"


def pin(known_hosts: Path, *ports: int) -> None:
    """A known_hosts file pinning a key for 127.0.0.1 on each port (status then tries SSH)."""
    known_hosts.write_text("".join(f"[127.0.0.1]:{port} {KEY}\n" for port in ports))


def health_server(healthy: bool) -> Flask:
    app = Flask("fake-gateway")

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        body = {"status": "ok" if healthy else "fail", "release": "abc123",
                "soul_sha256": "f" * 64, "problems": [] if healthy else ["state dir not writable"]}
        return jsonify(body), 200 if healthy else 503

    return app


@pytest.fixture
def fleet_registry(tmp_path: Path) -> Iterator[Path]:
    """Two agents on loopback: one healthy gateway, one failing; SSH port closed."""
    servers = []
    closed_ssh = free_port()
    lines = ["wizards:"]
    for name, healthy in (("alpha", True), ("beta", False)):
        port = free_port()
        server = make_server("127.0.0.1", port, health_server(healthy), threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        lines += [f"  {name}:", "    host: 127.0.0.1", "    role: worker", "    model: m",
                  f"    gateway_port: {port}", f"    ssh_port: {closed_ssh}"]
    path = tmp_path / "registry.yaml"
    path.write_text("fleet: {known_hosts: known_hosts}\n" + "\n".join(lines) + "\n")
    pin(tmp_path / "known_hosts", closed_ssh)
    yield path
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_reports_health_and_ssh_reasons(fleet_registry: Path) -> None:
    alpha, beta = probe_fleet(load_registry(fleet_registry), timeout=1)
    assert alpha.health == "ok" and alpha.release == "abc123" and alpha.soul_sha256 == "f" * 64
    assert beta.health == "HTTP 503: state dir not writable"
    assert beta.problems == ["state dir not writable"]
    for result in (alpha, beta):
        assert "Connection refused" in result.ssh
        assert not result.healthy


def test_status_json_and_exit_code(fleet_registry: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(fleet_registry), "status", "--json",
                                       "--timeout", "1"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["healthy"] is False
    assert [agent["agent"] for agent in data["agents"]] == ["alpha", "beta"]
    assert data["agents"][0]["health"] == "ok"


def test_status_table(fleet_registry: Path) -> None:
    result = CliRunner().invoke(main, ["--registry", str(fleet_registry), "status"])
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "ROLE", "HOST", "SSH", "HEALTH", "RELEASE", "SOUL",
                                "STATE"]
    assert lines[1].split() == ["alpha", "worker", "127.0.0.1", "FAIL", "ok", "abc123",
                                "ffffffffffff", "down"]
    assert "beta: health: HTTP 503: state dir not writable" in lines


def test_unreachable_health_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    ssh_port = free_port()
    path.write_text(f"fleet: {{known_hosts: known_hosts}}\n"
                    f"wizards:\n  gamma:\n    host: 127.0.0.1\n    role: worker\n    model: m\n"
                    f"    gateway_port: {free_port()}\n    ssh_port: {ssh_port}\n")
    pin(tmp_path / "known_hosts", ssh_port)
    (gamma,) = probe_fleet(load_registry(path), timeout=1)
    assert gamma.health == "connection refused"


def healthy_probe(**changes: str) -> AgentStatus:
    found = AgentStatus(agent="alpha", role="worker", host="127.0.0.1", ssh="ok", health="ok",
                        release="abc123abc123", soul_sha256="a" * 64, config_hash="c" * 64)
    for key, value in changes.items():
        setattr(found, key, value)
    return found


WANTED = Expected(config_hash="c" * 64, soul_sha256="a" * 64)


@pytest.mark.parametrize(("changes", "state", "drift"), [
    ({}, "ok", ()),
    ({"soul_sha256": "b" * 64}, "drift",
     ("soul.md is bbbbbbbbbbbb, the soul file is aaaaaaaaaaaa",)),
    ({"config_hash": "d" * 64}, "drift",
     ("config.json is dddddddddddd, the registry's is cccccccccccc",)),
    ({"release": "0123456789ab"}, "drift", ("release is 0123456789ab, expected abc123abc123",)),
    ({"health": "HTTP 503: boom", "soul_sha256": "b" * 64}, "down",
     ("soul.md is bbbbbbbbbbbb, the soul file is aaaaaaaaaaaa",)),
    ({"ssh": "connection refused"}, "down", ()),
])
def test_an_agent_is_ok_drift_or_down(changes: dict[str, str], state: str,
                                      drift: tuple[str, ...]) -> None:
    verdict = judge(healthy_probe(**changes), WANTED, "abc123abc123")
    assert (verdict.state, verdict.drift) == (state, drift)


def test_an_unknown_release_is_not_judged() -> None:
    verdict = judge(healthy_probe(release="0123456789ab"), WANTED, None)
    assert (verdict.state, verdict.release) == ("ok", "unknown")
