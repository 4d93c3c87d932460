"""Reading another service's HTTP answer within bounds: the one owner for every place the
controller (``fleet status``, the dashboard) and an agent's runtime read a node's ``/health`` or
``/metrics``.

One node's bad answer must cost its reader that node only. So the whole request (connect,
status line, headers, body) has one deadline, not one per read: a watchdog shuts the socket
down when it passes, which ends a read blocked on an answer dripping a byte at a time. The body
is read up to :data:`MAX_ANSWER_BYTES` (one byte more means the answer is refused, never kept
whole); JSON is parsed by :func:`bus.strictjson.loads` and numbers of Prometheus text only
within :data:`MAX_DIGITS` digits. Every failure is :class:`AnswerError` with a short reason
(``timed out``, ``connection refused``, ``answer over 1048576 bytes``, ...).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bus.strictjson import loads
from fleet.core.errors import FleetError

MAX_ANSWER_BYTES = 1024 * 1024
"""The largest answer body read (``/health`` and ``/metrics`` answers are a few KiB)."""
MAX_DIGITS = 18
"""The most digits of a Prometheus sample value read as a whole number (below 2**63)."""
SAMPLE_RE = re.compile(rf"([a-zA-Z_:][a-zA-Z0-9_:]{{0,127}})(?:\{{[^}}]{{0,1024}}\}})? "
                       rf"([0-9]{{1,{MAX_DIGITS}}})")
REASONS = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to host",
           errno.ENETUNREACH: "network is unreachable"}


class AnswerError(FleetError):
    """The answer could not be read within the bounds; the message is the short reason."""


@dataclass(frozen=True)
class Answer:
    """A whole answer, read within the bounds."""

    status: int
    reason: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON (:class:`AnswerError` when it is not, or nests too deep)."""
        try:
            return loads(self.body)
        except (ValueError, RecursionError):
            raise AnswerError("the answer is not JSON") from None

    def samples(self) -> dict[str, int]:
        """The whole-number samples of a Prometheus text answer by metric name (labels
        dropped; a sample whose value is not 1 to :data:`MAX_DIGITS` digits is left out)."""
        text = self.body.decode("utf-8", errors="replace")
        return {match[1]: int(match[2]) for line in text.splitlines()
                if (match := SAMPLE_RE.fullmatch(line))}


def get(url: str, timeout: float, limit: int = MAX_ANSWER_BYTES) -> Answer:
    """GET ``url`` (http or https) and read the whole answer within ``timeout`` seconds and
    ``limit`` body bytes; :class:`AnswerError` with the reason otherwise (any status is an
    answer)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnswerError(f"{url[:80]!r} is not an http(s) URL")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        connection = kind(parts.hostname, parts.port, timeout=timeout)
    except ValueError:  # a port out of range
        raise AnswerError(f"{url[:80]!r} is not an http(s) URL") from None
    deadline = time.monotonic() + timeout
    watchdog: threading.Timer | None = None
    try:
        connection.connect()  # within ``timeout``
        watchdog = threading.Timer(deadline - time.monotonic(), _cut, (connection.sock,))
        watchdog.daemon = True
        watchdog.start()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise AnswerError("timed out" if time.monotonic() >= deadline else _reason(exc)) from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        connection.close()
    if time.monotonic() >= deadline:  # cut off: what was read may end anywhere
        raise AnswerError("timed out")
    if len(body) > limit:
        raise AnswerError(f"answer over {limit} bytes")
    return Answer(response.status, response.reason, body)


def _cut(sock: socket.socket) -> None:
    """The deadline passed: end every read blocked on ``sock`` (the connection hands its
    socket to the answer once the headers are read, so the watchdog keeps its own hold)."""
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "name or service not known"
    if isinstance(exc, OSError) and exc.errno in REASONS:
        return REASONS[exc.errno]
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "connection closed before the whole answer"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__})"
    return "connection failed"
