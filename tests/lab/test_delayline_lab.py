"""Added latency between lab regions on a kernel without ``sch_netem``: the userspace delay
line (:mod:`fleet.lab.delayline`) on a lab of eu:2, us:1 at 80 ms.

TCP connects to sshd are timed from the controller and between nodes (``ip netns exec``); a
partition still cuts the region off; ``down`` leaves no delay line running.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import delayline
from fleet.lab.regions import netem_problem
from fleet.lab.state import NodeRecord
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root

pytestmark = [pytest.mark.lab]
LATENCY_MS = 80
CONNECT = ("import socket, sys, time; t = time.monotonic(); "
           "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))"
           "; print(time.monotonic() - t)")


@pytest.fixture(scope="module")
def regional() -> Iterator[tuple[str, dict[str, NodeRecord], dict[str, int]]]:
    """A lab of eu:2, us:1 with 80 ms between regions: (lab, records by region, ssh ports)."""
    skip_unless_root()
    if not netem_problem():
        pytest.skip("this kernel has tc netem: the lab uses it, not the delay line")
    if delayline.problem():
        pytest.skip(f"no delay line here: {delayline.problem()}")
    claimed = claim_test_lab("dl")
    try:
        lab.down(claimed.lab)
        path = lab.up(load_registry(EXAMPLE_REGISTRY), lab=claimed.lab,
                      regions=[("eu", 2), ("us", 1)], latency_ms=LATENCY_MS)
        records = lab.lab_nodes(claimed.lab)
        ports = {a.host: a.ssh_port for a in load_registry(path)}
        by_name = {f"{r.region}{n}": r for n, r in enumerate(records)}
        yield claimed.lab, by_name, ports
    finally:
        names = [r.netns for r in lab.lab_nodes(claimed.lab)]
        lab.down(claimed.lab)
        claimed.release()
        assert not [pid for ns in names for pid in delayline.running(ns)]


def connect_from(record: NodeRecord, target: NodeRecord, port: int,
                 timeout: float = 5.0) -> float | None:
    """Seconds a TCP connect from ``record``'s namespace to ``target`` took (None: failed)."""
    done = subprocess.run(["ip", "netns", "exec", record.netns, sys.executable, "-c", CONNECT,
                           target.ip, str(port), str(timeout)], capture_output=True, text=True,
                          check=False, timeout=timeout + 30)
    return float(done.stdout) if done.returncode == 0 else None


def best(times: list[float | None]) -> float:
    """The fastest of several measurements (a loaded machine only adds time)."""
    assert all(t is not None for t in times), times
    return min(t for t in times if t is not None)


def test_round_trips(regional: tuple[str, dict[str, NodeRecord], dict[str, int]]) -> None:
    _, nodes, ports = regional
    eu_a, eu_b, us = nodes["eu0"], nodes["eu1"], nodes["us2"]
    port = ports[us.ip]
    across = best([connect_from(eu_a, us, port) for _ in range(3)])
    within = best([connect_from(eu_a, eu_b, ports[eu_b.ip]) for _ in range(3)])
    back = best([connect_from(us, eu_b, ports[eu_b.ip]) for _ in range(3)])
    controller = []
    for _ in range(3):
        start = time.monotonic()
        socket.create_connection((us.ip, port), timeout=5).close()
        controller.append(time.monotonic() - start)
    assert across >= LATENCY_MS / 1000 and back >= LATENCY_MS / 1000, (across, back)
    assert min(controller) >= LATENCY_MS / 1000, controller
    assert within < 0.020, within
    assert across < 0.5 and min(controller) < 0.5, (across, controller)


def test_partition_is_not_bypassed(
        regional: tuple[str, dict[str, NodeRecord], dict[str, int]]) -> None:
    name, nodes, ports = regional
    eu, us = nodes["eu0"], nodes["us2"]
    lab.partition(name, "us")
    try:
        assert connect_from(eu, us, ports[us.ip], timeout=2) is None
        assert connect_from(us, eu, ports[eu.ip], timeout=2) is None
    finally:
        lab.partition(name, "us", heal=True)
    again = connect_from(us, eu, ports[eu.ip])
    assert again is not None and again >= LATENCY_MS / 1000, again
