"""Benchmark: do the fleet's HTTP services keep answering while slow clients hold connections?

Starts each service on 127.0.0.1 the way it runs for real (:mod:`fleet.core.serving`: gevent
workers, header deadline, connection limits), with a throw-away registry, keys and state:

- the gateway: the node unit's command (``gunicorn -c python:fleet.core.serving --workers 2
  fleet.node.gateway.wsgi:app``), measured on ``GET /health``;
- the webhook receiver: ``gunicorn -c python:fleet.webhook.serving --workers 2
  webhook_app:app`` (no push is sent, so no deploy runs), measured on ``GET /healthz``;
- the dashboard: ``fleet dashboard`` (its page, ``GET /dashboard/``; the registry's agents
  are not running, so each probe is refused at once).

Phases, each --requests requests one after another on a new connection each (a monitor):

1. idle, after 50 warm-up requests;
2. half-open: --connections connections that each sent half a request (request line and
   some headers, never the blank line) are kept open (one the server drops is opened again);
3. long polls (gateway): --connections signed ``GET /messages?wait_ms=5000`` held (each
   asked again as soon as it is answered), and besides the health requests, --requests
   signed sends (``POST /outbox``, answered once the message is durable).

Prints a Markdown table (p50/p99/max, failures) and writes the figures as JSON (--json).
Exits 1 when a health p99 is --budget-ms (50) or more, a send p99 --send-budget-ms (100) or
more, or any request failed. Loopback only; every held connection is closed after
--max-seconds at the latest.

    python bench/slow_clients.py [--connections 200] [--requests 300] [--service gateway ...]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_port, keys_env, percentile, wait_serving  # noqa: E402
from bus.keys import new_private_key, signing_key  # noqa: E402
from bus.signing import sign  # noqa: E402
from fleet.core import serving  # noqa: E402

HOST = "127.0.0.1"  # loopback only
TOKEN = "bench-read-token-0123456789"
AGENT, PEER = "bezalel", "ezra"
KEYS = {AGENT: new_private_key(), PEER: new_private_key()}
WAIT_MS = 5_000
HALF_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n"


@dataclass
class Service:
    """One server under test: how to start it and what to measure."""

    name: str
    command: list[str]
    env: dict[str, str]
    health: str  # the path a monitor asks
    headers: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    port: int = 0


def services(tmp: Path, chosen: list[str]) -> list[Service]:
    """The services named in ``chosen``, each with its own port, registry and state."""
    gateway_port, peer_port = free_port(), free_port()
    registry = tmp / "registry.yaml"
    registry.write_text(
        "wizards:\n"
        f"  {PEER}:\n    host: 127.0.0.1\n    role: orchestrator\n    model: bench/m\n"
        f"    gateway_port: {peer_port}\n"
        f"  {AGENT}:\n    host: 127.0.0.1\n    role: worker\n    model: bench/m\n"
        f"    gateway_port: {gateway_port}\n", encoding="utf-8")
    (tmp / "config.json").write_text("{}\n", encoding="utf-8")
    (tmp / "soul.md").write_text("# bench\n", encoding="utf-8")
    base = {**os.environ, "PYTHONPATH": str(REPO)}
    base.pop("FLEET_SECRETS", None)
    found = {
        "gateway": Service(
            "gateway", [sys.executable, "-m", "gunicorn", "-c", "python:fleet.core.serving",
                        "--workers", "2", "--bind", f"{HOST}:{gateway_port}",
                        "fleet.node.gateway.wsgi:app"],
            {**base, "FLEET_AGENT": AGENT, "FLEET_REGISTRY": str(registry),
             "FLEET_STATE_DIR": str(tmp / "gateway"), "FLEET_CONFIG": str(tmp / "config.json"),
             "FLEET_SOUL": str(tmp / "soul.md"), **keys_env(KEYS, AGENT)}, "/health", {},
            port=gateway_port),
        "receiver": Service(
            "receiver", [sys.executable, "-m", "gunicorn", "-c", "python:fleet.webhook.serving",
                         "--workers", "2", "--bind", f"{HOST}:{(port := free_port())}",
                         "webhook_app:app"],
            {**base, "FLEET_WEBHOOK_SECRET": "bench-webhook-secret-0123456789",
             "FLEET_READ_TOKEN": TOKEN, "FLEET_REPO_URL": f"file://{tmp}/no-such-repo.git",
             "FLEET_STATE_DIR": str(tmp / "receiver"), "FLEET_HEALTH_CHECK": "off",
             "FLEET_DEPLOY_COMMAND": "true"}, "/healthz",
            {"Authorization": f"Bearer {TOKEN}"}, port=port),
        "dashboard": Service(
            "dashboard", [sys.executable, "-m", "fleet", "--registry", str(registry),
                          "dashboard", "--port", str(port := free_port())],
            {**base, "FLEET_RECORDS_DIR": str(tmp / "records")}, "/dashboard/", {},
            port=port),
    }
    return [found[name] for name in chosen]


@contextlib.contextmanager
def running(service: Service, log: Path) -> Iterator[Service]:
    """``service`` started in its own process group, stopped afterwards."""
    with log.open("ab") as out:
        service.process = subprocess.Popen(service.command, cwd=REPO, env=service.env,
                                           stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
    try:
        wait_serving(service.process, lambda: ask(service, 2.0) == 200, service.name, log)
        yield service
    finally:
        os.killpg(service.process.pid, signal.SIGTERM)
        service.process.wait(timeout=30)


def ask(service: Service, timeout: float, method: str = "GET", path: str | None = None,
        body: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    """One request on a new connection: its status, 0 if it failed."""
    connection = http.client.HTTPConnection(HOST, service.port, timeout=timeout)
    try:
        connection.request(method, path or service.health, body,
                           headers=headers if headers is not None else service.headers)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def timed(call: Callable[[], bool], count: int) -> tuple[list[float], int]:
    """``count`` calls one after another: latencies in ms and failures."""
    took: list[float] = []
    failures = 0
    for _ in range(count):
        began = time.perf_counter()
        if not call():
            failures += 1
        took.append((time.perf_counter() - began) * 1000)
    return took, failures


def summary(took: list[float], failures: int) -> dict[str, Any]:
    """p50/p99/max in ms and the failure count."""
    return {"requests": len(took), "failures": failures,
            "p50_ms": round(percentile(took, 0.5), 2), "p99_ms": round(percentile(took, 0.99), 2),
            "max_ms": round(max(took), 2)}


class HalfOpen:
    """Keep ``count`` connections open that each sent half a request, for ``max_seconds``."""

    def __init__(self, port: int, count: int, max_seconds: float) -> None:
        self.port, self.count, self.max_seconds = port, count, max_seconds
        self.sockets: list[socket.socket] = []
        self.dropped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.sendall(HALF_REQUEST)
        self.sockets.append(sock)

    def _hold(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select(self.sockets, [], [], 0.1)
            for sock in readable:  # the server answered or closed it: open another
                self.sockets.remove(sock)
                sock.close()
                self.dropped += 1
                self._open()
        self.stop.set()

    def __enter__(self) -> HalfOpen:
        while len(self.sockets) < self.count:
            self._open()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


class LongPolls:
    """``count`` signed long polls of the agent's inbox, each asked again once answered."""

    def __init__(self, port: int, count: int, max_seconds: float) -> None:
        self.port, self.count = port, count
        self.deadline = time.monotonic() + max_seconds
        self.stop = threading.Event()
        self.answered = self.failures = 0
        self.lock = threading.Lock()
        self.sent = threading.Semaphore(0)  # released by each thread's first request
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(count)]

    def _poll(self) -> None:
        key = signing_key(AGENT, KEYS[AGENT])
        path = f"/messages?wait_ms={WAIT_MS}"
        first = True
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            headers = sign(key, "GET", f"http://{HOST}:{self.port}{path}", b"")
            connection = http.client.HTTPConnection(HOST, self.port, timeout=WAIT_MS / 1000 + 10)
            try:
                connection.request("GET", path, headers=headers)
                if first:
                    self.sent.release()
                    first = False
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
            finally:
                connection.close()
            with self.lock:
                self.answered += ok
                self.failures += not ok

    def __enter__(self) -> LongPolls:
        for thread in self.threads:
            thread.start()
        for _ in self.threads:
            self.sent.acquire(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=WAIT_MS / 1000 + 15)


def signed_send(service: Service, timeout: float) -> Callable[[], bool]:
    """A call that queues one signed message to the peer; True when it was accepted."""
    key = signing_key(AGENT, KEYS[AGENT])
    url = f"http://{HOST}:{service.port}/outbox"

    def send() -> bool:
        body = json.dumps({"to": PEER, "type": "request", "payload": {"n": 1}}).encode()
        headers = {**sign(key, "POST", url, body), "Content-Type": "application/json"}
        return 200 <= ask(service, timeout, "POST", "/outbox", body, headers) < 300

    return send


def measure(service: Service, args: argparse.Namespace) -> dict[str, Any]:
    """The phases of one running service."""
    health = lambda: ask(service, args.timeout) == 200  # noqa: E731
    timed(health, 50)  # warm-up: imports, first probes
    phases: dict[str, Any] = {"idle": summary(*timed(health, args.requests))}
    with HalfOpen(service.port, args.connections, args.max_seconds) as held:
        phases["half-open"] = {**summary(*timed(health, args.requests)),
                               "held": args.connections, "dropped_by_server": held.dropped}
    if service.name == "gateway":
        with LongPolls(service.port, args.connections, args.max_seconds) as polls:
            phases["long polls"] = {**summary(*timed(health, args.requests)),
                                    "held": args.connections}
            phases["long polls: signed send"] = {
                **summary(*timed(signed_send(service, args.timeout), args.requests)),
                "held": args.connections}
        phases["long polls"]["polls_answered"] = polls.answered
        phases["long polls"]["polls_failed"] = polls.failures
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", action="append", choices=["gateway", "receiver",
                                                              "dashboard"],
                        help="service to measure (repeatable; default: all three)")
    parser.add_argument("--connections", type=int, default=200,
                        help="half-open connections, and long polls held")
    parser.add_argument("--requests", type=int, default=300, help="requests per phase")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="health p99 below this")
    parser.add_argument("--send-budget-ms", type=float, default=100.0,
                        help="signed send p99 below this")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="held connections are closed after this at the latest")
    parser.add_argument("--json", type=Path,
                        default=Path(tempfile.gettempdir()) / "slow_clients.json")
    args = parser.parse_args()
    if not 0 < args.connections <= 400:
        parser.error("--connections must be from 1 to 400")
    if not 0 < args.requests <= 5000:
        parser.error("--requests must be from 1 to 5000")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as scratch:
        tmp = Path(scratch)
        for service in services(tmp, args.service or ["gateway", "receiver", "dashboard"]):
            with running(service, tmp / f"{service.name}.log"):
                results[service.name] = measure(service, args)
    load = os.getloadavg()
    failed = []
    for name, phases in results.items():
        for phase, figures in phases.items():
            budget = args.send_budget_ms if "send" in phase else args.budget_ms
            if figures["p99_ms"] >= budget or figures["failures"] or figures.get("polls_failed"):
                failed.append(f"{name} {phase}")
    report = {"settings": serving.OPTIONS, "services": results, "budget_ms": args.budget_ms,
              "send_budget_ms": args.send_budget_ms, "failed": failed,
              "loadavg": [round(value, 2) for value in load], "cpus": os.cpu_count()}
    args.json.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{args.requests} requests per phase, one after another, a new connection each; "
          f"{args.connections} connections held:\n")
    print("| service | phase | p50 ms | p99 ms | max ms | failed |")
    print("|---|---|---:|---:|---:|---:|")
    for name, phases in results.items():
        for phase, figures in phases.items():
            print(f"| {name} | {phase} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f} | "
                  f"{figures['max_ms']:.2f} | {figures['failures']} |")
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; "
          f"budgets: health p99 < {args.budget_ms:g} ms, send p99 < {args.send_budget_ms:g} "
          f"ms, 0 failed: {'FAILED: ' + ', '.join(failed) if failed else 'ok'}; "
          f"JSON: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
