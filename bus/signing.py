"""HMAC-SHA256 request signing shared by gateways, the delivery worker and clients.

A signed request carries three headers::

    X-Fleet-Agent: <agent name>            # whose key signed it
    X-Fleet-Timestamp: <unix seconds>
    X-Fleet-Signature: sha256=<hex>

The signature is ``HMAC-SHA256(key, "<timestamp>\\n<METHOD>\\n<path>\\n<query>\\n" + body)``:
the timestamp and body as the message contract says, plus method, path and query so a signed
read cannot be replayed against another endpoint. A timestamp more than 5 minutes away from
the receiver's clock is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import unquote

from fleet.errors import BusError

AGENT_HEADER = "X-Fleet-Agent"
TIMESTAMP_HEADER = "X-Fleet-Timestamp"
SIGNATURE_HEADER = "X-Fleet-Signature"
WINDOW_SECONDS = 300


class AuthError(BusError):
    """A request's signature is missing, wrong or stale (answered with 401)."""


def signature(key: str, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    """``sha256=<hex>`` over the canonical form of one request."""
    head = f"{timestamp}\n{method.upper()}\n{unquote(path)}\n{query}\n".encode()
    digest = hmac.new(key.encode(), head + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def sign(agent: str, key: str, method: str, path: str, query: str = "", body: bytes = b"",
         now: float | None = None) -> dict[str, str]:
    """The three headers that sign a request as ``agent``."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        AGENT_HEADER: agent,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(key, timestamp, method, path, query, body),
    }


def verify(headers: Mapping[str, str], keys: Mapping[str, str], method: str, path: str,
           query: str, body: bytes, now: float | None = None) -> str:
    """The signing agent's name, or :class:`AuthError` saying what is wrong."""
    agent = headers.get(AGENT_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    missing = [name for name, value in ((AGENT_HEADER, agent), (TIMESTAMP_HEADER, timestamp),
                                        (SIGNATURE_HEADER, given)) if not value]
    if missing:
        raise AuthError(f"unsigned request: missing {', '.join(missing)}",
                        hint="Sign requests with the sender's FLEET_BUS_KEY (bus.signing.sign).")
    assert agent and timestamp and given
    key = keys.get(agent)
    if key is None:
        raise AuthError(f"{AGENT_HEADER}: no bus key for agent {agent!r} on this gateway",
                        hint="Add the agent's key to FLEET_BUS_KEYS.")
    try:
        skew = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        raise AuthError(f"{TIMESTAMP_HEADER}: {timestamp!r} is not unix seconds") from None
    if skew > WINDOW_SECONDS:
        raise AuthError(f"{TIMESTAMP_HEADER}: {timestamp} is {int(skew)} s from this gateway's "
                        f"clock (allowed: {WINDOW_SECONDS} s)", hint="Check the clocks (NTP).")
    expected = signature(key, timestamp, method, path, query, body)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise AuthError(f"{SIGNATURE_HEADER}: signature does not match the body and "
                        f"{agent!r}'s key")
    return agent
