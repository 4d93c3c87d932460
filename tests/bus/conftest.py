"""Bus fixtures: a temp registry on loopback, Flask test clients and real gateway processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from bus.client import BusClient
from bus.keys import (
    OPERATOR,
    PRIVATE_KEY_ENV,
    PUBLIC_KEYS_ENV,
    RECEIVER,
    format_keyring,
    keyring_of,
    new_private_key,
    signing_key,
)
from bus.signing import sign
from fleet.core.registry import load_registry
from fleet.node.gateway import create_app
from tests.ports import free_port
from tests.waiting import wait_for

AGENTS = ("ezra", "bezalel", "allegro", "ghost")  # ghost is registered but never started
KEYS = {name: new_private_key() for name in (*AGENTS, OPERATOR, RECEIVER)}  # private, by name
UNTRUSTED_KEY = new_private_key()  # a key no gateway trusts (a forger's)
PUBLIC = format_keyring(keyring_of(KEYS.items()))  # every gateway's FLEET_BUS_PUBLIC_KEYS
FAST_RETRIES = {"FLEET_BUS_RETRY_BASE": "0.05", "FLEET_BUS_RETRY_MAX": "0.5",
                "FLEET_BUS_POLL_SECONDS": "0.2", "FLEET_BUS_MAX_ATTEMPTS": "1000"}


def write_registry(folder: Path) -> Path:
    """A registry of :data:`AGENTS` on 127.0.0.1, each with its own free port."""
    lines = ["wizards:"]
    for number, name in enumerate(AGENTS):
        role = "orchestrator" if number == 0 else "worker"
        lines += [f"  {name}:", "    host: 127.0.0.1", f"    role: {role}", "    model: test/m",
                  f"    gateway_port: {free_port()}"]
    path = folder / "registry.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def message(**fields: Any) -> dict[str, Any]:
    """A valid message from ezra to bezalel, with ``fields`` replaced."""
    base = {"id": "m-1", "from": "ezra", "to": "bezalel", "type": "request",
            "payload": {"task": "review"}, "timestamp": datetime.now(UTC).isoformat()}
    base.update(fields)
    return base


def signed_headers(agent: str, body: bytes, path: str = "/message", method: str = "POST",
                   query: str = "", key: str | None = None, now: float | None = None,
                   content_type: str | None = "application/json",
                   host: str = "localhost") -> dict[str, str]:
    """Headers signing a request to ``host`` as ``agent`` (with another private ``key`` to
    forge one)."""
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    headers = sign(signing_key(agent, key or KEYS[agent]), method, url, body, now=now)
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def rows(store: Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a query on a bus store and close it again."""
    db = sqlite3.connect(store)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return write_registry(tmp_path)


def bezalel_app(registry: Path, state: Path, **settings: Any) -> Flask:
    """bezalel's gateway app on ``registry`` with the delivery worker off (``settings`` added
    to its config)."""
    return create_app({"AGENT": "bezalel", "REGISTRY": str(registry),
                       "STATE_DIR": str(state), "BUS_PUBLIC_KEYS": PUBLIC,
                       "BUS_PRIVATE_KEY": KEYS["bezalel"], "BUS_WORKER": False,
                       "TESTING": True, **settings})


@pytest.fixture
def app(tmp_path: Path, registry_path: Path) -> Flask:
    """bezalel's gateway app with the delivery worker off."""
    return bezalel_app(registry_path, tmp_path / "state")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def store(app: Flask) -> Path:
    return Path(app.config["STATE_DIR"]) / "bus.sqlite3"


class Gateway:
    """One agent's gateway run by ``fleet gateway serve`` in its own process group."""

    def __init__(self, name: str, registry: Path, state: Path, env: dict[str, str]) -> None:
        self.name, self.registry, self.state = name, registry, state
        self.agent = load_registry(registry).get(name)
        self.url = self.agent.gateway_url
        self.env = {**os.environ, PUBLIC_KEYS_ENV: PUBLIC, PRIVATE_KEY_ENV: KEYS[name], **env}
        self.env.pop("FLEET_SECRETS", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"{name}.log"

    def start(self, timeout: float = 20.0) -> Gateway:
        """Start the process and wait until it answers on its port."""
        command = [sys.executable, "-c", "from fleet.cli import main; main()",
                   "--registry", str(self.registry), "gateway", "serve", "--agent", self.name,
                   "--port", str(self.agent.gateway_port), "--state-dir", str(self.state)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                with requests.get(f"{self.url}/openapi.json", timeout=1) as response:
                    return response.status_code == 200
            except requests.RequestException:  # not listening yet, or slow under load
                return False

        wait_for(answers, timeout, lambda: f"{self.name} to start: {self.log.read_text()[-2000:]}")
        return self

    def signal(self, number: int) -> None:
        """Send ``number`` to the gateway's whole process group and reap it."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        os.killpg(self.process.pid, number)
        self.process.wait(timeout=20)
        self.process = None

    def stop(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def client(self, timeout: float = 10.0) -> BusClient:
        """A client signing as this agent."""
        return BusClient(self.url, self.name, KEYS[self.name], timeout=timeout)

    @property
    def host(self) -> str:
        """``host:port`` as clients send it in ``Host`` (what signatures cover)."""
        return f"{self.agent.host}:{self.agent.gateway_port}"

    @property
    def store(self) -> Path:
        return self.state / "bus.sqlite3"


class Fleet:
    """Gateways of one temp registry, stopped at the end of the test."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.registry = write_registry(folder)
        self.gateways = {name: Gateway(name, self.registry, folder / name, env)
                         for name in AGENTS}

    def start(self, *names: str) -> list[Gateway]:
        return [self.gateways[name].start() for name in names]

    def __getitem__(self, name: str) -> Gateway:
        return self.gateways[name]

    def stop(self) -> None:
        """Kill every gateway; fail if one logged a traceback (e.g. a delivery thread)."""
        for gateway in self.gateways.values():
            gateway.kill()
        for gateway in self.gateways.values():
            log = gateway.log.read_text() if gateway.log.exists() else ""
            assert "Traceback" not in log, f"{gateway.name} logged an error:\n{log[-3000:]}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A registry of four agents; start gateways with ``fleet.start(name, ...)``."""
    found = Fleet(tmp_path, dict(FAST_RETRIES))
    yield found
    found.stop()


@pytest.fixture(scope="module")
def bezalel_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One running gateway (bezalel) shared by a module's refusal tests."""
    found = Fleet(tmp_path_factory.mktemp("bus"), dict(FAST_RETRIES))
    yield found["bezalel"].start()
    found.stop()


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def write_operator_secrets(folder: Path) -> Path:
    """A secrets file (0600) holding only the operator's bus key, for ``fleet bus``."""
    path = folder / "operator-secrets.yaml"
    path.touch(mode=0o600)
    path.write_text(f"identities:\n  {OPERATOR}:\n    {PRIVATE_KEY_ENV}: {KEYS[OPERATOR]}\n",
                    encoding="utf-8")
    return path


@pytest.fixture
def operator_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$FLEET_SECRETS`` set to a file with the operator's key (the ``fleet bus`` CLI's)."""
    path = write_operator_secrets(tmp_path)
    monkeypatch.setenv("FLEET_SECRETS", str(path))
    return path
