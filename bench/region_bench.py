"""Deploys across regions at added latency: cold and no-change ``fleet deploy`` of a lab of
3 regions x 3 nodes at 0, 50 and 100 ms between regions and to the controller, with the SSH
round trips each host took (counted by :mod:`bench.roundtrips` inside each node's namespace).

    python bench/region_bench.py [--latencies 0,50,100] [--regions eu:3,us:3,ap:3]
                                 [--no-change-runs 2] [--lab region-bench] [--rev HEAD]

Goal (issue 13): a no-change deploy at 100 ms takes under 3x its time at 0 ms. The latency is
the lab's own (``fleet lab up --latency``): tc netem in the nodes' namespaces, or on a kernel
without sch_netem the lab's userspace delay line (:mod:`fleet.lab.delayline`), which delays
every packet to other regions and to the controller, SSH and the bus alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import clone as clean_clone  # noqa: E402
from bench._common import fleet_command, fleet_env  # noqa: E402
from bench.roundtrips import RoundTrips, describe  # noqa: E402
from fleet import lab  # noqa: E402
from fleet.control.release import build_release  # noqa: E402
from fleet.core.registry import load_registry  # noqa: E402
from fleet.core.release_marker import Broken  # noqa: E402
from fleet.lab.regions import latency_method, parse_spec  # noqa: E402


def timed_deploy(clone: Path, registry: Path, lab_name: str,
                 scratch: Path) -> tuple[float, dict[str, Any], dict[str, dict[str, int]]]:
    """(seconds, run record, round trips per host) of one ``fleet deploy``."""
    with RoundTrips(lab_name, scratch) as counted:
        started = time.perf_counter()
        done = subprocess.run(fleet_command("deploy"), cwd=clone,
                              env=fleet_env(clone, registry), capture_output=True, text=True,
                              check=False)
        elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"fleet deploy failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    path = done.stdout.rsplit("(record: ", 1)[1].split(")", 1)[0]
    return elapsed, json.loads(Path(path).read_text()), counted.counts


def critical_round_trips(record: dict[str, Any], counts: dict[str, dict[str, int]]) -> int:
    """Sum over the rollout's stages of the largest round-trip count of a host in it."""
    return sum(max(counts[name]["round_trips"] for name in stage["hosts"])
               for stage in record["stages"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", default="0,50,100")
    parser.add_argument("--regions", default="eu:3,us:3,ap:3")
    parser.add_argument("--no-change-runs", type=int, default=2)
    parser.add_argument("--lab", default="region-bench")
    parser.add_argument("--rev", default="HEAD", help="commit to deploy (default: HEAD)")
    args = parser.parse_args()
    latencies = [float(value) for value in args.latencies.split(",")]
    regions = parse_spec(args.regions)
    method = latency_method()
    scratch_dir, clone = clean_clone(args.rev)
    counters = Path(tempfile.mkdtemp(prefix="fleet-roundtrips-"))
    release = build_release(clone, broken=Broken.NO)
    print(f"release {release.id}; regions {args.regions}; load {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores", flush=True)
    base: dict[str, float] = {}
    base_trips = 0
    try:
        for latency in latencies:
            how = method if latency else ""
            lab.down(args.lab)
            registry = lab.up(load_registry(REPO / "registry.yaml"), lab=args.lab,
                              regions=regions, latency_ms=latency, jitter_ms=latency / 10)
            cold, _, cold_counts = timed_deploy(clone, registry, args.lab, counters)
            runs = [timed_deploy(clone, registry, args.lab, counters)
                    for _ in range(args.no_change_runs)]
            times = [elapsed for elapsed, _, _ in runs]
            _, record, counts = runs[-1]
            median = statistics.median(times)
            if not latency:
                base = {"cold": cold, "no-change": median}
                base_trips = critical_round_trips(record, counts)
            if not latency:
                base["fastest"] = min(times)
            ratio = f" ({median / base['no-change']:.2f}x 0 ms" if base and latency else ""
            fastest = f" ({min(times) / base['fastest']:.2f}x 0 ms)" if base and latency else ""
            if base and latency:
                predicted = base["no-change"] + base_trips * latency / 1000
                ratio += (f"; at most {predicted:.2f} s predicted from the {base_trips} round "
                          "trips on the critical path at 0 ms)")
            print(f"{latency:g} ms ({how or 'none added'}): cold {cold:.2f} s "
                  f"({describe(cold_counts)}); no-change "
                  f"{', '.join(f'{t:.2f}' for t in times)} s, median {median:.2f} s{ratio}, "
                  f"fastest {min(times):.2f} s{fastest} "
                  f"({describe(counts)}; {critical_round_trips(record, counts)} on the "
                  f"critical path of {len(record['stages'])} stages); load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    finally:
        lab.down(args.lab)
        scratch_dir.cleanup()


if __name__ == "__main__":
    main()
