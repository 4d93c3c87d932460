"""The socket options of the deploy's SSH connections, set through paramiko's documented
``transport_factory`` (passed with pyinfra's ``ssh_paramiko_connect_kwargs``); paramiko sets
none itself.

- Dead-peer detection: pyinfra's SSH connector sends no keepalives, so a node that vanishes in
  the middle of a command (a region cut off by a partition, a crashed VPS) would leave its
  connection waiting forever, and the rollout's stage with it. TCP keepalives and a TCP user
  timeout fail a peer that answers nothing for about :data:`DEAD_AFTER_S` seconds, and the
  rollout goes on without it.
- No Nagle stall: paramiko writes an SSH packet per ``send``; with Nagle's algorithm on, a
  small packet sent while the one before is unacknowledged waits for the peer's delayed ACK
  (40 ms on Linux). Opening a channel and starting a command did that every time: each
  command of a deploy took about 45 ms on an idle lab node however short, 3 ms with
  ``TCP_NODELAY``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 4
DEAD_AFTER_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES
"""An idle connection whose peer stays silent this long is closed by the kernel; one with
unacknowledged data is closed after the same time (``TCP_USER_TIMEOUT``)."""

SOCKET_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_S * 1000),
)


def set_options(sock: Any) -> None:
    """Set :data:`SOCKET_OPTIONS` on ``sock`` (a TCP socket; a proxy command's pipe has none
    and is left alone)."""
    if not hasattr(sock, "setsockopt"):
        return
    for level, option, value in SOCKET_OPTIONS:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


def transport_factory(sock: Any, **kwargs: Any) -> Any:
    """paramiko's ``transport_factory``: a ``Transport`` over ``sock`` after
    :func:`set_options`."""
    import paramiko  # only in the pyinfra process that connects

    set_options(sock)
    return paramiko.Transport(sock, **kwargs)


PARAMIKO_CONNECT_KWARGS: dict[str, Any] = {"transport_factory": transport_factory}
"""pyinfra host data ``ssh_paramiko_connect_kwargs`` for every deploy connection."""
