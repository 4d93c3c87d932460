"""Time ``fleet deploy`` on a lab of 3 nodes: cold (fresh nodes) and no-change (again).

    python bench/deploy_bench.py [--rounds 3] [--lab deploy-bench] [--rev HEAD] [--prestage]
                                 [--nodes 3]

Deploys a clean clone of HEAD (or ``--rev``, to compare with an earlier commit; edits in the
work tree do not change the release midway). Besides wall time it prints the CPU time (user +
sys) of ``fleet deploy`` and all its pyinfra processes, which tells code changes from load.
Each round brings up a fresh lab (its own name; taken down at the end), runs one cold deploy
and then no-change deploys. The release is built (or taken from the cache) before timing, as
a controller that deployed before would have it. Prints every figure and the medians, and
the SSH round trips per host of a no-change deploy (:mod:`bench.roundtrips`, counted in each
node's namespace during an extra no-change deploy that is not timed). ``--prestage`` deploys
with ``fleet deploy --prestage`` (the workers get the release before their rollout gate);
``--nodes N`` boots N nodes (the registry's agents, then extra workers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import clone as clean_clone  # noqa: E402
from bench._common import cpu_of_children, fleet_command, fleet_env  # noqa: E402
from bench.roundtrips import RoundTrips, describe  # noqa: E402
from fleet import lab  # noqa: E402
from fleet.control.release import build_release  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402
from fleet.core.release_marker import Broken  # noqa: E402


def timed_deploy(clone: Path, registry: Path, cpu: list[float], *options: str) -> float:
    """Seconds taken by one ``fleet deploy OPTIONS`` from ``clone`` (fails loudly if it fails);
    its CPU seconds (with its pyinfra processes) are appended to ``cpu``."""
    cpu_before = cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(fleet_command("deploy", *options), cwd=clone,
                          env=fleet_env(clone, registry),
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    cpu.append(cpu_of_children() - cpu_before)
    if done.returncode != 0:
        raise SystemExit(f"fleet deploy failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-change-runs", type=int, default=3)
    parser.add_argument("--lab", default="deploy-bench")
    parser.add_argument("--rev", default="HEAD", help="commit to deploy (default: HEAD)")
    parser.add_argument("--prestage", action="store_true",
                        help="deploy with --prestage (default: the registry's setting, off)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="lab nodes (default: one per agent of registry.yaml, 3)")
    args = parser.parse_args()
    options = ("--prestage",) if args.prestage else ()
    scratch, clone = clean_clone(args.rev)
    release = build_release(clone, broken=Broken.NO)
    print(f"release {release.id} ({release.path.stat().st_size / 1e6:.1f} MB)")
    cold: list[float] = []
    no_change: list[float] = []
    cold_cpu: list[float] = []
    no_change_cpu: list[float] = []
    trips: list[str] = []
    try:
        for round_ in range(1, args.rounds + 1):
            lab.down(args.lab)
            registry = lab.up(load_registry(REPO / "registry.yaml"), nodes=args.nodes,
                              lab=args.lab)
            cold.append(timed_deploy(clone, registry, cold_cpu, *options))
            runs = [timed_deploy(clone, registry, no_change_cpu, *options)
                    for _ in range(args.no_change_runs)]
            no_change.extend(runs)
            with RoundTrips(args.lab, Path(scratch.name)) as counted:
                timed_deploy(clone, registry, [])
            trips.append(describe(counted.counts))
            cpu = no_change_cpu[-len(runs):]
            print(f"round {round_}: cold {cold[-1]:.2f} s (CPU {cold_cpu[-1]:.2f} s), no-change "
                  f"{', '.join(f'{t:.2f}' for t in runs)} s (CPU "
                  f"{', '.join(f'{t:.2f}' for t in cpu)} s), no-change {trips[-1]}, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        lab.down(args.lab)
        scratch.cleanup()
    load = os.getloadavg()[0]
    command = " ".join(("fleet deploy", *options))
    print(f"{command}, {args.nodes or 3} nodes: cold median {statistics.median(cold):.2f} s "
          f"(CPU {statistics.median(cold_cpu):.2f} s), "
          f"no-change median {statistics.median(no_change):.2f} s "
          f"({min(no_change):.2f}-{max(no_change):.2f} s, CPU "
          f"{statistics.median(no_change_cpu):.2f} s) "
          f"(load average {load:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
