"""Benchmark: does the webhook receiver keep answering while slow clients hold connections?

Starts the real receiver (``gunicorn webhook_app:app`` with the production worker settings of
``fleet.webhook.serving``) on 127.0.0.1 with a throw-away state dir and a dummy repo URL (no
push is sent, so no deploy runs). Then:

1. idle: after 50 warm-up requests, --requests ``GET /healthz`` one after another (a new
   connection each, like a monitor), latency of each;
2. held: opens --connections connections that each send half a request (request line and
   some headers, never the blank line that ends them) and keeps that many open (a connection
   the receiver drops is opened again), then the same --requests ``GET /healthz``.

Prints a Markdown table (p50/p99/max, errors) and writes the figures as JSON (--json).
Exits 1 when the held p99 is --budget-ms (50) or more, or any request failed. Loopback only;
the held connections are bounded in number and closed after --max-seconds at the latest.

    python bench/receiver_slow_clients.py [--connections 200] [--requests 500] [--workers 2]
                                          [--worker-class sync] [--json PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only
TOKEN = "bench-read-token-0123456789"
HALF_REQUEST = (b"POST /hooks/gitea HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nX-Gitea-Event: push\r\n")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class HalfOpenClients:
    """Keep ``count`` connections open that each sent half a request, for ``max_seconds``."""

    def __init__(self, port: int, count: int, max_seconds: float) -> None:
        self.port, self.count, self.max_seconds = port, count, max_seconds
        self.sockets: list[socket.socket] = []
        self.opened = self.dropped = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._hold, name="half-open-clients", daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=5)
        sock.sendall(HALF_REQUEST)
        self.sockets.append(sock)
        self.opened += 1

    def start(self) -> HalfOpenClients:
        """Open them all, then keep their number up in the background."""
        while len(self.sockets) < self.count:
            self._open()
        self.thread.start()
        return self

    def _hold(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select(self.sockets, [], [], 0.1)
            for sock in readable:  # the receiver answered or closed it: open another
                self.sockets.remove(sock)
                sock.close()
                self.dropped += 1
                self._open()
        self.close()

    def open_now(self) -> int:
        """How many are open at this moment."""
        return len(self.sockets)

    def close(self) -> None:
        """Close every connection (also when the deadline passed)."""
        self.stop.set()
        for sock in list(self.sockets):
            sock.close()
        self.sockets.clear()

    def __enter__(self) -> HalfOpenClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.close()


def healthz_latencies(port: int, requests: int, timeout: float) -> tuple[list[float], int]:
    """``requests`` GET /healthz, a new connection each: latencies in ms and failures."""
    latencies: list[float] = []
    failures = 0
    for _ in range(requests):
        began = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            connection.request("GET", "/healthz", headers={"Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures += 1
        except OSError:
            failures += 1
        finally:
            connection.close()
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies, failures


def summary(latencies: list[float], failures: int) -> dict[str, Any]:
    """p50/p99/max in ms and the failure count."""
    return {"requests": len(latencies), "failures": failures,
            "p50_ms": round(percentile(latencies, 0.5), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "max_ms": round(max(latencies), 2)}


def start_receiver(tmp: Path, port: int, workers: int, worker_class: str | None,
                   ) -> subprocess.Popen[bytes]:
    """gunicorn serving the receiver; waits until it answers."""
    env = {**os.environ, "FLEET_WEBHOOK_SECRET": "bench-webhook-secret-0123456789",
           "FLEET_READ_TOKEN": TOKEN, "FLEET_REPO_URL": f"file://{tmp}/no-such-repo.git",
           "FLEET_STATE_DIR": str(tmp / "state"), "FLEET_HEALTH_CHECK": "off",
           "FLEET_DEPLOY_COMMAND": "true"}
    command = [sys.executable, "-m", "gunicorn", "--config", "python:fleet.webhook.serving",
               "--workers", str(workers), "--bind", f"{HOST}:{port}"]
    if worker_class:
        command += ["--worker-class", worker_class]
    server = subprocess.Popen([*command, "webhook_app:app"], cwd=REPO, env=env,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            connection.request("GET", "/openapi.json")
            if connection.getresponse().status == 200:
                connection.close()
                return server
        except OSError:
            time.sleep(0.05)
    os.killpg(server.pid, signal.SIGTERM)
    raise SystemExit("the receiver did not start within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200, help="half-open connections")
    parser.add_argument("--requests", type=int, default=500, help="GET /healthz per phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default=None,
                        help="override fleet.webhook.serving's worker class (e.g. sync)")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="held p99 must be below")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-request timeout (s)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="half-open connections are closed after this at the latest")
    parser.add_argument("--json", type=Path,
                        default=Path(tempfile.gettempdir()) / "receiver_slow_clients.json")
    args = parser.parse_args()
    if not 0 < args.connections <= 1000:
        parser.error("--connections must be from 1 to 1000")

    from fleet.webhook import serving

    worker_class = args.worker_class or serving.worker_class
    tmp = Path(tempfile.mkdtemp(prefix="receiver-slow-clients-"))
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    server = start_receiver(tmp, port, args.workers, args.worker_class)
    try:
        healthz_latencies(port, 50, args.timeout)  # warm-up: imports, the dispatcher's start
        time.sleep(1)
        idle = summary(*healthz_latencies(port, args.requests, args.timeout))
        with HalfOpenClients(port, args.connections, args.max_seconds) as clients:
            held_latencies, held_failures = healthz_latencies(port, args.requests, args.timeout)
            still_open = clients.open_now()
        held = {**summary(held_latencies, held_failures), "half_open": args.connections,
                "open_at_end": still_open, "opened": clients.opened,
                "dropped_by_receiver": clients.dropped}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    load = os.getloadavg()
    result = {"worker_class": worker_class, "workers": args.workers,
              "settings": {**serving.OPTIONS, "worker_class": worker_class},
              "idle": idle, "held": held, "budget_ms": args.budget_ms,
              "loadavg": [round(value, 2) for value in load], "cpus": os.cpu_count()}
    passed = held["p99_ms"] < args.budget_ms and held["failures"] == 0
    result["passed"] = passed
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"GET /healthz of the receiver ({worker_class}, {args.workers} workers), "
          f"{args.requests} requests per phase, a new connection each:\n")
    print("| phase | half-open connections | p50 ms | p99 ms | max ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, phase, count in (("idle", idle, 0), ("held", held, args.connections)):
        print(f"| {name} | {count} | {phase['p50_ms']:.2f} | {phase['p99_ms']:.2f} | "
              f"{phase['max_ms']:.2f} | {phase['failures']} |")
    print(f"\nheld: {held['open_at_end']} half-open at the end, {held['dropped_by_receiver']} "
          f"dropped by the receiver (header deadline) and reopened; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"p99 {'<' if passed else '>='} {args.budget_ms:g} ms budget"
          f"{'' if held['failures'] == 0 else ' (requests failed)'}: "
          f"{'ok' if passed else 'FAILED'}; JSON: {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
