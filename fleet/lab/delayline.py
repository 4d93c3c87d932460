"""A userspace delay line: added latency for lab regions where the kernel has no ``sch_netem``.

Inside a node's network namespace, :func:`install` creates a TUN device ``dl0`` and routes the
delayed destinations through it (table :data:`TABLE`); the program (``python -m
fleet.lab.delayline``) reads each IP packet from ``dl0``, holds it for its destination's delay
(± jitter, never overtaking an earlier packet to the same address) and sends it on through a
raw socket marked :data:`MARK`, which a policy rule routes by the main table (``eth0``). A link
that is down (a partition) has no route, so the packet is dropped as the kernel would drop it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import heapq
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from fleet.core.errors import LabError
from fleet.lab import processes
from fleet.lab.commands import run

DEVICE = "dl0"
MARK = 0x464C  # "FL"
TABLE = 4681
RULE_PRIORITY = 100
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SO_MARK = 36
MODULE = "fleet.lab.delayline"
ROUTE_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})=(\d+(?:\.\d+)?)(?:~(\d+(?:\.\d+)?))?")
START_TIMEOUT = 10.0
_children: dict[int, subprocess.Popen[bytes]] = {}
"""Delay lines this process started, by pid: kept so they are reaped (no zombie, no warning)."""


def open_tun(name: str) -> int:
    """Attach to TUN device ``name`` (raw IP packets, no packet-info header)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def parse_routes(items: list[str]) -> dict[str, tuple[float, float]]:
    """``ADDR=MS[~JITTER]`` items as ``{addr: (delay s, jitter s)}``."""
    routes = {}
    for item in items:
        match = ROUTE_RE.fullmatch(item)
        if not match:
            raise SystemExit(f"delayline: {item!r} is not ADDR=MS[~JITTER]")
        routes[match.group(1)] = (float(match.group(2)) / 1000,
                                  float(match.group(3) or 0) / 1000)
    return routes


def serve(fd: int, routes: dict[str, tuple[float, float]], default: tuple[float, float]) -> None:
    """Delay every packet read from ``fd`` and send it on (until SIGTERM)."""
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
    queue: list[tuple[float, int, str, bytes]] = []
    last: dict[str, float] = {}
    count = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([fd], [], [], timeout)
        now = time.monotonic()
        if readable:
            while True:
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue
                dst = socket.inet_ntoa(packet[16:20])
                delay, jitter = routes.get(dst, default)
                due = max(now + delay + random.uniform(-jitter, jitter), last.get(dst, 0.0))
                last[dst] = due
                count += 1
                heapq.heappush(queue, (due, count, dst, packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, dst, packet = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # unreachable (link down): dropped
                out.sendto(packet, (dst, 0))
        if len(last) > 4096:
            last = {d: t for d, t in last.items() if t > now}


def main(argv: list[str] | None = None) -> None:
    """``python -m fleet.lab.delayline --netns NS --delay MS [--jitter MS] [ADDR=MS~J ...]``."""
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--netns", required=True, help="the namespace (for finding us later)")
    parser.add_argument("--device", default=DEVICE)
    parser.add_argument("--delay", type=float, default=0, help="one-way delay, ms")
    parser.add_argument("--jitter", type=float, default=0, help="± jitter, ms")
    parser.add_argument("routes", nargs="*", help="ADDR=MS[~JITTER]: another delay for ADDR")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = open_tun(args.device)
    serve(fd, parse_routes(args.routes), (args.delay / 1000, args.jitter / 1000))


def running(prefix: str) -> list[int]:
    """Pids of delay lines serving namespaces whose names start with ``prefix``."""
    found = []
    for pid, args in processes.command_lines():
        if MODULE.encode() in args and b"--netns" in args[:-1]:
            netns = args[args.index(b"--netns") + 1].decode(errors="replace")
            if netns.startswith(prefix):
                found.append(pid)
    return found


def stop(prefix: str, timeout: float = 5.0) -> None:
    """Stop every delay line of namespaces starting with ``prefix``."""
    pids = running(prefix)
    for pid in pids:
        processes.signal_pid(pid, signal.SIGTERM)
    for pid in processes.wait_gone(pids, timeout):
        processes.signal_pid(pid, signal.SIGKILL)
    processes.wait_gone(pids, 2)
    for pid in pids:
        child = _children.pop(pid, None)
        if child is not None:
            child.wait(5)


def install(netns: str, source: str, routes: dict[str, tuple[float, float]],
            log: Path) -> int:
    """Create ``dl0`` in ``netns``, route ``routes`` (``{addr: (one-way ms, jitter ms)}``)
    through it from ``source`` and start the delay line; returns its pid."""
    ip = ["ip", "-n", netns]
    run([*ip, "tuntap", "add", "dev", DEVICE, "mode", "tun"])
    run([*ip, "link", "set", DEVICE, "up"])
    run([*ip, "rule", "add", "fwmark", hex(MARK), "lookup", "main", "priority",
         str(RULE_PRIORITY)])
    run([*ip, "rule", "add", "lookup", str(TABLE), "priority", str(RULE_PRIORITY + 1)])
    for address in routes:
        run([*ip, "route", "add", f"{address}/32", "dev", DEVICE, "src", source, "table",
             str(TABLE)])
    command = ["ip", "netns", "exec", netns, sys.executable, "-m", MODULE, "--netns", netns,
               *(f"{a}={ms:g}~{jitter:g}" for a, (ms, jitter) in routes.items())]
    with log.open("ab") as out:
        child = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    _children[child.pid] = child
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        state = run([*ip, "-o", "link", "show", DEVICE], check=False).stdout
        if "NO-CARRIER" not in state and state:
            return child.pid
        if child.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
            _children.pop(child.pid, None)
            raise LabError(f"the delay line of {netns} did not start (exit "
                           f"{child.returncode}): see {log}",
                           hint="Boot the lab without --latency.")
        time.sleep(0.05)


def problem() -> str:
    """Why the delay line cannot work here (empty when it can)."""
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TUN support)"
    try:
        with open("/dev/net/tun", "rb"):
            pass
    except OSError as exc:
        return f"cannot open /dev/net/tun: {errno.errorcode.get(exc.errno or 0, exc)}"
    return ""


if __name__ == "__main__":
    main()
