"""Time `fleet lab up` / `fleet lab down` for 3 and 20 nodes (needs root).

Runs the library calls behind the CLI on a lab of its own (``bench`` unless --lab), a fresh
lab each round, and prints the median and range per size. The rootfs cache is warmed first
so the figures exclude the one-off debootstrap.

    python bench/lab_bench.py [--sizes 3 20] [--rounds 3] [--lab bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from fleet import lab
from fleet.lab.rootfs import ensure_base
from fleet.registry import load_registry

REPO = Path(__file__).resolve().parent.parent


def measure(lab_name: str, nodes: int) -> tuple[float, float]:
    """One round: seconds for up (all nodes SSH-ready) and for down."""
    registry = load_registry(REPO / "registry.yaml")
    started = time.perf_counter()
    lab.up(registry, nodes=nodes, lab=lab_name)
    booted = time.perf_counter()
    assert all(node.running for node in lab.status(lab_name))
    lab.down(lab_name)
    return booted - started, time.perf_counter() - booted


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
    finally:
        lab.down(args.lab)
        claim.release()
    return 0


def _fmt(values: tuple[float, ...]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
