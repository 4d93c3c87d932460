"""Benchmark `fleet status` (SSH + health of every agent, in parallel) and the dashboard page
on lab fleets.

Brings up a lab of N nodes from the example registry, optionally deploys it, and times, each
the median of --rounds:

- ``probe_fleet`` in this process with new SSH connections, then with the shared ones;
- the ``fleet status --json`` command as an operator runs it (a new process: imports, registry,
  probes) with new SSH connections;
- ``fleet dashboard`` as production serves it (gunicorn, its gevent worker) with the lab's N
  agents: its first page (the first fill: the dashboard probes the fleet itself), then the
  page again and again after it (real HTTP GETs on new connections, --page-every seconds
  apart while its refresher probes the fleet in the background).

Each timed probe starts once the machine is quiet (:func:`bench._common.settle`: a just
deployed lab's agents keep the cores busy for a while). Each line ends with the load average
(as `uptime` shows it). Takes the lab down again. Needs
root.

    python bench/status_bench.py --nodes 3 20 [--deploy]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    fleet_command,
    free_port,
    http_answers,
    settle,
    wait_serving,
)
from fleet import lab  # noqa: E402
from fleet.control.status import CONTROL_DIR_ENV, AgentStatus, probe_fleet  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402

LAB = "bench-status"


def load() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return "load={:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def fresh_control_dir() -> str:
    """A new folder for SSH master sockets: the next probe opens new connections."""
    return tempfile.mkdtemp(prefix="fleet-ssh-")


def time_probes(registry_path: Path, rounds: int) -> tuple[list[float], list[float],
                                                             list[AgentStatus]]:
    """``probe_fleet`` with new, then shared SSH connections, ``rounds`` times each."""
    registry = load_registry(registry_path)
    cold: list[float] = []
    warm: list[float] = []
    results: list[AgentStatus] = []
    for _ in range(rounds):
        os.environ[CONTROL_DIR_ENV] = fresh_control_dir()
        settle()
        for timings in (cold, warm):  # new SSH connections, then the shared ones
            start = time.perf_counter()
            results = probe_fleet(registry)
            timings.append(time.perf_counter() - start)
    return cold, warm, results


def time_command(registry_path: Path, rounds: int) -> list[float]:
    """The ``fleet status --json`` command, with new SSH connections each round."""
    timings = []
    for _ in range(rounds):
        env = {**os.environ, "FLEET_REGISTRY": str(registry_path),
               CONTROL_DIR_ENV: fresh_control_dir()}
        settle()
        start = time.perf_counter()
        subprocess.run(fleet_command("status", "--json"), env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        timings.append(time.perf_counter() - start)
    return timings


def get_page(port: int, path: str = "/dashboard/") -> tuple[float, int, int]:
    """One GET on a new connection: (seconds to the whole answer, status, body bytes)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    return time.perf_counter() - start, response.status, len(body)


def time_dashboard(registry_path: Path, rounds: int, every: float,
                   refresh: float) -> tuple[float, list[float], str]:
    """``fleet dashboard`` on the lab: (first page, the pages after it, what a page held)."""
    port = free_port()
    env = {**os.environ, "FLEET_REGISTRY": str(registry_path), CONTROL_DIR_ENV:
           fresh_control_dir()}
    server = subprocess.Popen(
        fleet_command("dashboard", "--port", str(port), "--refresh", str(refresh)), env=env,
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(server, lambda: http_answers(f"http://127.0.0.1:{port}/openapi.json", 1),
                     "fleet dashboard")
        first, status, size = get_page(port)
        if status != 200:
            raise SystemExit(f"the dashboard answered {status}")
        pages = []
        for _ in range(rounds):
            time.sleep(every)  # a viewer's pace, not waiting for anything to happen
            seconds, status, size = get_page(port)
            if status != 200:
                raise SystemExit(f"the dashboard answered {status}")
            pages.append(seconds)
        return first, pages, f"{size} bytes"
    finally:
        server.terminate()
        server.wait(timeout=30)


def bench(nodes: int, rounds: int, deploy: bool, settle_s: float, page_rounds: int,
          page_every: float, refresh: float) -> None:
    """Time status and the dashboard over a fresh lab of ``nodes`` nodes."""
    print(f"lab     nodes={nodes:<3} before up: {load()}", flush=True)
    lab_registry = lab.up(load_registry(REPO / "registry.yaml"), nodes=nodes, lab=LAB)
    try:
        if deploy:
            subprocess.run([sys.executable, "-m", "fleet", "deploy"], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL,
                           env={**os.environ, "FLEET_REGISTRY": str(lab_registry)})
        time.sleep(settle_s)  # let freshly started gateways finish booting, then wait
        waited, busy = settle()  # for a quiet machine (at most 180 s) before timing
        print(f"settle  nodes={nodes:<3} waited {waited:g}s for a quiet machine (busy share "
              f"{busy:.0%})  {load()}", flush=True)
        cold, warm, results = time_probes(lab_registry, rounds)
        ssh_ok = sum(result.ssh == "ok" for result in results)
        healthy = sum(result.healthy for result in results)
        print(f"status  nodes={nodes:<3} new connections: median={statistics.median(cold):.3f}s "
              f"max={max(cold):.3f}s; shared: median={statistics.median(warm):.3f}s "
              f"max={max(warm):.3f}s  ssh_ok={ssh_ok}/{nodes} healthy={healthy}/{nodes}  "
              f"{load()}", flush=True)
        command = time_command(lab_registry, rounds)
        print(f"command nodes={nodes:<3} `fleet status --json`, new connections: "
              f"median={statistics.median(command):.3f}s max={max(command):.3f}s  {load()}",
              flush=True)
        first, pages, size = time_dashboard(lab_registry, page_rounds, page_every, refresh)
        print(f"page    nodes={nodes:<3} dashboard first fill={first:.3f}s; after it "
              f"({len(pages)} GETs, {page_every:g}s apart, refresh {refresh:g}s): "
              f"median={statistics.median(pages) * 1000:.1f}ms max={max(pages) * 1000:.1f}ms "
              f"({size})  {load()}", flush=True)
    finally:
        lab.down(LAB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deploy", action="store_true", help="deploy the lab before timing")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after boot/deploy before timing")
    parser.add_argument("--page-rounds", type=int, default=20,
                        help="dashboard pages timed after the first fill")
    parser.add_argument("--page-every", type=float, default=0.5,
                        help="seconds between those pages")
    parser.add_argument("--refresh", type=float, default=5.0,
                        help="the dashboard's refresh interval (`fleet dashboard --refresh`)")
    args = parser.parse_args()
    for nodes in args.nodes:
        bench(nodes, args.rounds, args.deploy, args.settle, args.page_rounds, args.page_every,
              args.refresh)


if __name__ == "__main__":
    main()
