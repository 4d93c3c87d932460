"""Count the SSH round trips a lab node takes part in: a packet counter run inside the node's
own network namespace (AF_PACKET on its ``eth0``; nothing on the host's interfaces).

    ip netns exec NETNS python bench/roundtrips.py OUT.json      # until SIGTERM

or, from a benchmark, one counter per node of a lab around a deploy::

    with RoundTrips(lab_name, scratch_dir) as counted:
        ...                                  # counted.counts: {node: {...}} afterwards

A round trip is a *client flight*: client-to-server TCP payload sent after the server last
sent payload on that connection (the client waited for an answer), plus one per connection
for the TCP handshake. Server messages the client does not wait for (an exit status after
the output) can make this count a little higher than the waits that cost latency. At L ms
of added latency each one costs about L ms. Written to OUT.json on SIGTERM:
``{"connections": N, "round_trips": R, "packets": P}``.
"""

from __future__ import annotations

import json
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

ETH_P_ALL = 0x0003
SSH_PORTS = (22,)  # sshd


class Counter:
    """Client flights per TCP connection to port 22."""

    def __init__(self) -> None:
        self.last: dict[tuple[bytes, int], str] = {}  # (client ip, port) -> last payload side
        self.connections = 0
        self.round_trips = 0
        self.packets = 0

    def frame(self, data: bytes) -> None:
        """Account one Ethernet frame."""
        if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
            return
        ihl = (data[14] & 0x0F) * 4
        total = struct.unpack("!H", data[16:18])[0]
        tcp = 14 + ihl
        if len(data) < tcp + 14:
            return
        sport, dport = struct.unpack("!HH", data[tcp:tcp + 4])
        offset = (data[tcp + 12] >> 4) * 4
        flags = data[tcp + 13]
        payload = total - ihl - offset
        if sport not in SSH_PORTS and dport not in SSH_PORTS:
            return
        to_server = dport in SSH_PORTS
        client = (data[26:30], sport) if to_server else (data[30:34], dport)
        self.packets += 1
        if to_server and flags & 0x02 and not flags & 0x10:  # SYN: a new connection
            self.connections += 1
            self.round_trips += 1  # SYN, SYN-ACK; the client's banner follows without waiting
            self.last[client] = "client"
            return
        if payload <= 0:
            return
        side = "client" if to_server else "server"
        if side == "client" and self.last.get(client) == "server":
            self.round_trips += 1
        self.last[client] = side

    def result(self) -> dict[str, int]:
        return {"connections": self.connections, "round_trips": self.round_trips,
                "packets": self.packets}


class RoundTrips:
    """One packet counter per lab node for the length of a ``with`` block."""

    def __init__(self, lab_name: str, scratch: Path) -> None:
        from fleet.lab import lab_nodes

        self.nodes = {node.name: node.netns for node in lab_nodes(lab_name)}
        self.scratch = scratch
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def __enter__(self) -> RoundTrips:
        for name, netns in self.nodes.items():
            out = self.scratch / f"{name}.json"
            out.unlink(missing_ok=True)
            out.with_suffix(".ready").unlink(missing_ok=True)
            self.processes[name] = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, __file__, str(out)])
        deadline = time.monotonic() + 30
        while not all((self.scratch / f"{n}.ready").exists() for n in self.nodes):
            if time.monotonic() > deadline:
                raise SystemExit("the round-trip counters did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            process.wait(timeout=30)
            self.counts[name] = json.loads((self.scratch / f"{name}.json").read_text())


def describe(counts: dict[str, dict[str, int]]) -> str:
    """Round trips and SSH connections per host, as one phrase."""
    trips = sorted(count["round_trips"] for count in counts.values())
    conns = sorted(count["connections"] for count in counts.values())
    return (f"round trips per host median {statistics.median(trips):g} "
            f"({trips[0]}-{trips[-1]}), SSH connections per host {statistics.median(conns):g}")


def main() -> None:
    out = Path(sys.argv[1])
    counter = Counter()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind(("eth0", 0))
    running = True

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    sock.settimeout(0.2)
    out.with_suffix(".ready").write_text("ready\n")
    while running:
        try:
            counter.frame(sock.recv(65535))
        except TimeoutError:
            continue
    out.write_text(json.dumps(counter.result()) + "\n")


if __name__ == "__main__":
    main()
