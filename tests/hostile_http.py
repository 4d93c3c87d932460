"""A hostile HTTP server on loopback for the readers of nodes' answers: it answers every
request in one of a few ways an attacker (or a broken node) might."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

MIB = 1024 * 1024
HUGE_NUMBER = b'fleet_bus_received_total{a="x"} ' + b"9" * 5000 + b"\n"
GOOD_METRICS = b'fleet_bus_outbox_depth{agent="beta"} 2\nfleet_bus_dead_letters{agent="beta"} 1\n'
DRIP_EVERY_S = 0.1


def head(length: int | None = None, content_type: str = "text/plain") -> bytes:
    """A 200 answer's status line and headers (no Content-Length: the body ends at close)."""
    sized = f"Content-Length: {length}\r\n" if length is not None else ""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{sized}"
            "Connection: close\r\n\r\n").encode()


class Hostile(socketserver.ThreadingTCPServer):
    """Answers every request as ``mode`` says: ``good`` (well-formed metrics), ``huge-number``
    (a metric of 5,000 digits), ``huge-body`` (300 MiB of comment lines), ``drip-body`` (a
    line every 0.1 s, never ending), ``drip-headers`` (a header line every 0.1 s, never
    ending), ``deep-json`` (a JSON array nested 100,000 deep), ``bad-gzip`` (a body said to
    be gzip that is not), ``reset-past-calendar`` (a GitHub rate limit spent until the year
    33658)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stopping = threading.Event()
        self.served = 0
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class Handler(socketserver.BaseRequestHandler):
    """One connection: read the request's head, answer as the server's mode says."""

    server: Hostile

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        received = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in received and len(received) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                received += chunk
            self.server.served += 1
            self.answer(sock)

    def answer(self, sock: socket.socket) -> None:
        mode, stopping = self.server.mode, self.server.stopping
        if mode == "good":
            sock.sendall(head(len(GOOD_METRICS)) + GOOD_METRICS)
        elif mode == "huge-number":
            body = HUGE_NUMBER + GOOD_METRICS
            sock.sendall(head(len(body)) + body)
        elif mode == "huge-body":
            sock.sendall(head(300 * MIB))
            block = b"# " + b"x" * 1021 + b"\n"
            chunk = block * 1024
            for _ in range(300):
                if stopping.is_set():
                    return
                sock.sendall(chunk)
        elif mode == "deep-json":
            body = b"[" * 100_000
            sock.sendall(head(len(body), "application/json") + body)
        elif mode == "bad-gzip":  # says gzip, is not
            body = b"this is not gzip at all"
            sock.sendall(head(len(body), "application/json").replace(
                b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1) + body)
        elif mode == "reset-past-calendar":  # the limit spent, reset in the year 33658
            body = b'{"default_branch": "main"}'
            sock.sendall(head(len(body), "application/json").replace(
                b"\r\n\r\n", b"\r\nX-RateLimit-Remaining: 0\r\n"
                b"X-RateLimit-Reset: 999999999999\r\n\r\n", 1) + body)
        elif mode in ("drip-body", "drip-headers"):
            if mode == "drip-body":
                sock.sendall(head())
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\n")
            line = b"# still here\n" if mode == "drip-body" else b"X-Still: here\r\n"
            while not stopping.wait(DRIP_EVERY_S):
                sock.sendall(line)


@contextlib.contextmanager
def hostile(mode: str) -> Iterator[Hostile]:
    """A :class:`Hostile` server in ``mode``, serving until the block ends (then stopped,
    its connections closed)."""
    server = Hostile(mode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def finishes(function: object, within_s: float) -> tuple[bool, float, object]:
    """Run ``function()`` in a thread: whether it returned within ``within_s`` seconds, how
    long it took, and what it returned (or raised)."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(function())  # type: ignore[operator]
        except BaseException as exc:  # handed to the test
            result.append(exc)

    began = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(within_s)
    return not thread.is_alive(), time.monotonic() - began, result[0] if result else None
