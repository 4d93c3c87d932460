"""A userspace delay line for SSH, for benchmarks on kernels without tc netem: an ssh
``ProxyCommand`` that relays stdin/stdout to HOST:PORT and holds every chunk for half the
given round-trip time in each direction (order kept), so each SSH round trip costs that much
more, as added network latency would. It delays only the controller's SSH connections (not
node-to-node traffic): a stand-in for the deploy benchmark, not for the lab's regions.

    ProxyCommand python bench/delayline.py %h %p 100     # in an ssh_config: +100 ms per RTT
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import BinaryIO


def pump(read: BinaryIO | socket.socket, write: BinaryIO | socket.socket, delay: float) -> None:
    """Copy ``read`` to ``write``, each chunk sent ``delay`` s after it arrived."""
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def reader() -> None:
        while True:
            data = read.recv(65536) if isinstance(read, socket.socket) else os.read(
                read.fileno(), 65536)
            chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    threading.Thread(target=reader, daemon=True).start()
    while True:
        due, data = chunks.get()
        time.sleep(max(0.0, due - time.monotonic()))
        if not data:
            if isinstance(write, socket.socket):
                write.shutdown(socket.SHUT_WR)
            else:
                write.close()
            return
        if isinstance(write, socket.socket):
            write.sendall(data)
        else:
            write.write(data)
            write.flush()


def main() -> None:
    host, port, rtt_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    one_way = rtt_ms / 2000
    conn = socket.create_connection((host, port), timeout=30)
    conn.settimeout(None)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = threading.Thread(target=pump, args=(sys.stdin.buffer, conn, one_way), daemon=True)
    out.start()
    pump(conn, sys.stdout.buffer, one_way)


if __name__ == "__main__":
    main()
