"""Benchmark `fleet status` (SSH + health of every agent, in parallel) on lab fleets.

Brings up a lab of N nodes from the example registry, optionally deploys it, times
`probe_fleet` (median of --rounds), and takes the lab down again. Needs root.

    python bench/status_bench.py --nodes 3 20 [--deploy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet import lab  # noqa: E402
from fleet.control.status import AgentStatus, probe_fleet  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402

LAB = "bench-status"


def bench(nodes: int, rounds: int, deploy: bool, settle: float) -> None:
    """Time status over a fresh lab of ``nodes`` nodes."""
    lab_registry = lab.up(load_registry(REPO / "registry.yaml"), nodes=nodes, lab=LAB)
    try:
        if deploy:
            subprocess.run([sys.executable, "-m", "fleet", "deploy"], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL,
                           env={**os.environ, "FLEET_REGISTRY": str(lab_registry)})
        registry = load_registry(lab_registry)
        time.sleep(settle)  # let freshly started gateways finish booting before timing
        cold: list[float] = []
        warm: list[float] = []
        results: list[AgentStatus] = []
        for _ in range(rounds):
            os.environ["FLEET_SSH_CONTROL_DIR"] = tempfile.mkdtemp(prefix="fleet-ssh-")
            for timings in (cold, warm):  # new SSH connections, then the shared ones
                start = time.perf_counter()
                results = probe_fleet(registry)
                timings.append(time.perf_counter() - start)
        ssh_ok = sum(result.ssh == "ok" for result in results)
        healthy = sum(result.healthy for result in results)
        print(f"status  nodes={nodes:<3} new connections: median={statistics.median(cold):.3f}s "
              f"max={max(cold):.3f}s; shared: median={statistics.median(warm):.3f}s "
              f"max={max(warm):.3f}s  ssh_ok={ssh_ok}/{nodes} healthy={healthy}/{nodes}  "
              f"load={os.getloadavg()[0]:.1f}")
    finally:
        lab.down(LAB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deploy", action="store_true", help="deploy the lab before timing")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait after boot/deploy before timing")
    args = parser.parse_args()
    for nodes in args.nodes:
        bench(nodes, args.rounds, args.deploy, args.settle)


if __name__ == "__main__":
    main()
