"""Lab regions: which nodes belong to which region, added latency between regions (``tc
netem``) and partitions.

Everything happens inside the nodes' own network namespaces (``ip -n`` / ``tc -n``), never on
the host's interfaces. With ``latency`` L ms, each node's ``eth0`` gets an HTB root with three
classes: its own region's nodes (no delay), other regions' nodes (netem, L/2 each way, so L
per round trip) and the controller (netem, L: the controller is a region of its own). A
partition takes the region's ``eth0`` links down; heal brings them up again. A kernel without
``sch_netem`` gets the same delays from a userspace delay line (:mod:`fleet.lab.delayline`).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from fleet.core.errors import LabError
from fleet.core.registry import REGION_RE
from fleet.lab import delayline
from fleet.lab.commands import run

SPEC_RE = re.compile(r"([a-z][a-z0-9-]{0,30}):([1-9][0-9]{0,2})")
RATE = "10gbit"  # HTB needs a rate; far above what the lab moves


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """``eu:3,us:3`` as ``[("eu", 3), ("us", 3)]`` (names once each, counts 1-999)."""
    regions: list[tuple[str, int]] = []
    for item in spec.split(","):
        match = SPEC_RE.fullmatch(item)
        if not match:
            raise LabError(f"--regions {spec!r}: {item!r} is not NAME:COUNT",
                           hint="Write regions like eu:3,us:3,ap:3 (lowercase names, counts "
                                "from 1).")
        name, count = match.group(1), int(match.group(2))
        if any(name == seen for seen, _ in regions):
            raise LabError(f"--regions {spec!r}: region {name!r} is listed twice",
                           hint="List each region once with its node count.")
        regions.append((name, count))
    return regions


def assign(regions: list[tuple[str, int]]) -> list[str]:
    """The region of each node position, in order (``eu, eu, us, ...``)."""
    return [name for name, count in regions for _ in range(count)]


def netem_problem() -> str:
    """Why ``tc netem`` cannot add latency here (empty when it can): tried in a scratch
    network namespace, so nothing on the host changes."""
    scratch = f"flnetem-{os.getpid()}"
    try:
        run(["ip", "netns", "add", scratch])
    except LabError as exc:
        return f"cannot create a network namespace to try tc netem: {exc}"
    try:
        done = subprocess.run(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root",
                               "netem", "delay", "1ms"], capture_output=True, text=True,
                              check=False)
        if done.returncode:
            return (f"tc netem does not work on this kernel ({done.stderr.strip()}): the "
                    "sch_netem module is missing or cannot be loaded")
        return ""
    except FileNotFoundError:
        return "tc is not installed (Debian package iproute2)"
    finally:
        run(["ip", "netns", "del", scratch], check=False)


def latency_method() -> str:
    """``netem``, or ``delayline`` where the kernel lacks netem; :class:`LabError` naming both
    reasons when neither can add latency."""
    problem = netem_problem()
    if not problem:
        return "netem"
    fallback = delayline.problem()
    if not fallback:
        return "delayline"
    raise LabError(f"cannot add latency between lab regions: {problem}; and no delay line: "
                   f"{fallback}",
                   hint="Boot the lab without --latency (regions and partitions still "
                        "work), or on a kernel with sch_netem (modprobe sch_netem).")


def shape(netns: str, controller: str, same_region: list[str], latency_ms: float,
          jitter_ms: float) -> None:
    """Add ``latency_ms`` (± ``jitter_ms``) per round trip from this node to other regions and
    to the controller; none to ``same_region`` addresses."""
    tc = ["tc", "-n", netns]
    half, half_jitter = f"{latency_ms / 2:g}ms", f"{jitter_ms / 2:g}ms"
    run([*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "20"])
    for klass in ("10", "20", "30"):
        run([*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", f"1:{klass}",
             "htb", "rate", RATE])
    run([*tc, "qdisc", "add", "dev", "eth0", "parent", "1:20", "handle", "20:", "netem",
         "delay", half, half_jitter])
    run([*tc, "qdisc", "add", "dev", "eth0", "parent", "1:30", "handle", "30:", "netem",
         "delay", f"{latency_ms:g}ms", f"{jitter_ms:g}ms"])
    targets = [(controller, "1:30"), *((address, "1:10") for address in same_region)]
    for address, flow in targets:
        run([*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio",
             "1", "u32", "match", "ip", "dst", f"{address}/32", "flowid", flow])


def delay(netns: str, source: str, controller: str, other_regions: list[str],
          latency_ms: float, jitter_ms: float, log: Path) -> int:
    """:func:`shape`'s delays from a userspace delay line (no netem): half the round trip on
    each side for ``other_regions`` (they delay their half), all of it to the controller."""
    routes = {address: (latency_ms / 2, jitter_ms / 2) for address in other_regions}
    routes[controller] = (latency_ms, jitter_ms)
    return delayline.install(netns, source, routes, log)


def set_links(netns_names: list[str], up: bool) -> None:
    """Bring the nodes' ``eth0`` down (a partition) or up again (heal)."""
    for netns in netns_names:
        run(["ip", "-n", netns, "link", "set", "eth0", "up" if up else "down"])


def check_region(region: str, known: list[str], lab: str) -> None:
    """:class:`LabError` unless ``region`` is one of the lab's regions."""
    if not REGION_RE.fullmatch(region) or region not in known:
        raise LabError(f"lab {lab!r} has no region {region!r} (regions: "
                       f"{', '.join(known) or 'none'})",
                       hint="Boot the lab with --regions eu:2,us:2 and name one of them.")
