"""A userspace delay line for SSH, for benchmarks on kernels without tc netem: a TCP relay
run inside a lab node's own network namespace that forwards connections on PORT to the
node's sshd and holds every chunk for half the given round-trip time in each direction
(order kept), so each SSH round trip costs that much more, as network latency would. It
delays only what is sent to PORT (the controller's SSH), not node-to-node traffic: a stand-in
for the deploy benchmark, not for the lab's regions.

    ip netns exec NETNS python bench/delayline.py 2222 100   # :2222 -> 127.0.0.1:22, +100 ms
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time


def pump(read: socket.socket, write: socket.socket, delay: float) -> None:
    """Copy ``read`` to ``write``, each chunk sent ``delay`` s after it arrived."""
    chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def reader() -> None:
        while True:
            try:
                data = read.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + delay, data))
            if not data:
                return

    threading.Thread(target=reader, daemon=True).start()
    while True:
        due, data = chunks.get()
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            if not data:
                write.shutdown(socket.SHUT_WR)
                return
            write.sendall(data)
        except OSError:
            return


def relay(client: socket.socket, target: tuple[str, int], delay: float) -> None:
    """One connection: both directions through the delay line."""
    with client, socket.create_connection(target) as server:
        for conn in (client, server):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=pump, args=(server, client, delay), daemon=True)
        back.start()
        pump(client, server, delay)
        back.join()


def main() -> None:
    port, rtt_ms = int(sys.argv[1]), float(sys.argv[2])
    target = ("127.0.0.1", int(sys.argv[3]) if len(sys.argv) > 3 else 22)
    listener = socket.create_server(("0.0.0.0", port), reuse_port=False)
    print("ready", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=relay, args=(client, target, rtt_ms / 2000),
                         daemon=True).start()


if __name__ == "__main__":
    main()
