"""Free loopback ports for test servers, never the same one twice in a test session."""

from __future__ import annotations

import socket

_given: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no earlier call returned
    (the kernel may hand a just-closed port out again; two servers of one test must differ)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _given:
            _given.add(port)
            return port
