"""The dashboard's fixtures: a fleet of two agents on closed loopback ports (every agent
down, nothing pinned so nothing is probed over SSH) and a records folder with one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ports import free_port

RUN_ID = "20261130T100000Z-aaaaaa"


def closed_port() -> int:
    """A loopback port nothing listens on, never one given before in this session (two
    agents of one registry must not share a port: the kernel may hand the same one out
    twice)."""
    return free_port()


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    port, other = closed_port(), closed_port()
    (tmp_path / "souls").mkdir()
    for name in ("alpha", "beta"):
        (tmp_path / "souls" / f"{name}.md").write_text(f"# {name}\n")
    (tmp_path / "known_hosts").write_text("")  # nothing pinned: every agent is refused
    (tmp_path / "registry.yaml").write_text(f"""\
fleet:
  name: loop
  known_hosts: known_hosts
wizards:
  alpha:
    host: 127.0.0.1
    role: orchestrator
    model: m
    ssh_port: {port}
    gateway_port: {port}
  beta:
    host: 127.0.0.1
    role: worker
    model: m
    ssh_port: {port}
    gateway_port: {other}
""")
    records = tmp_path / "records"
    records.mkdir()
    (records / f"{RUN_ID}.json").write_text(json.dumps({
        "run_id": RUN_ID, "kind": "deploy", "status": "ok", "dry": False,
        "release": "abc123abc123", "hosts": {
            "alpha": {"status": "ok", "release": "abc123abc123",
                      "changed": ["Soul | Agent soul (read-only)"]},
            "beta": {"status": "rolled_back", "release": "0123",
                     "reason": "verify failed: /health answers 503"}}}))
    return tmp_path
