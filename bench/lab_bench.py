"""Time `fleet lab up` / `fleet lab down` for 3 and 20 nodes (needs root).

Runs the real CLI commands on a lab of its own (``bench`` unless --lab), a fresh
lab each round, and prints the median and range per size. The rootfs cache is warmed first
so the figures exclude the one-off debootstrap.

    python bench/lab_bench.py [--sizes 3 20] [--rounds 3] [--lab bench]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import paths, processes
from fleet.lab.rootfs import ensure_base

REPO = Path(__file__).resolve().parent.parent


def measure(lab_name: str, nodes: int) -> tuple[float, float]:
    """One round: seconds for `fleet lab up` (all nodes SSH-ready) and `fleet lab down`."""
    fleet = ["fleet", "--registry", str(REPO / "registry.yaml"), "lab"]
    started = time.perf_counter()
    subprocess.run([*fleet, "up", "-n", str(nodes), "--lab", lab_name], check=True,
                   capture_output=True)
    booted = time.perf_counter()
    assert all(node.running for node in lab.status(lab_name))
    subprocess.run([*fleet, "down", "--lab", lab_name], check=True, capture_output=True)
    return booted - started, time.perf_counter() - booted


def footprint(lab_name: str) -> tuple[float, float]:
    """Mean PSS (MiB) of one idle node's processes and of its overlay upper dir (MiB)."""
    pss_total = 0
    upper_total = 0
    nodes = lab.status(lab_name)
    for node in nodes:
        cgroup = paths.cgroup_dirs(lab_name, node.name)[-1]
        for pid in processes.cgroup_pids(cgroup):
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            pss_total += sum(int(line.split()[1]) for line in rollup.splitlines()
                             if line.startswith("Pss:"))
        upper = paths.lab_dir(lab_name) / "nodes" / node.name / "upper"
        upper_total += sum(f.stat().st_size for f in upper.rglob("*")
                           if f.is_file() and not f.is_symlink())
    return pss_total / 1024 / len(nodes), upper_total / 2**20 / len(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lab", default="bench")
    args = parser.parse_args()
    claim = lab.claim(args.lab)
    if claim is None:
        print(f"lab {args.lab!r} is in use by another process; pass --lab", file=sys.stderr)
        return 1
    try:
        lab.down(args.lab)
        ensure_base()
        print(f"{'nodes':>5}  {'up median (min-max)':>22}  {'down median (min-max)':>24}")
        for size in args.sizes:
            ups, downs = zip(*(measure(args.lab, size) for _ in range(args.rounds)), strict=True)
            print(f"{size:>5}  {_fmt(ups):>22}  {_fmt(downs):>24}", flush=True)
        lab.up(load_registry(REPO / "registry.yaml"), nodes=3, lab=args.lab)
        time.sleep(2)
        pss, upper = footprint(args.lab)
        print(f"idle node: {pss:.1f} MiB PSS, {upper:.1f} MiB in its overlay upper dir")
    finally:
        lab.down(args.lab)
        claim.release()
    return 0


def _fmt(values: tuple[float, ...]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
