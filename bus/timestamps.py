"""Time as text, one way: what every record, API answer and bus message says "when" with.

- :func:`utc_timestamp`: RFC 3339 in UTC with milliseconds and ``Z``
  (``2026-12-05T10:00:00.123Z``): run records, the webhook receiver's runs and checks, the
  dashboard, tool calls, and the ``timestamp`` of the messages the bus builds. Strings of it
  sort as the times do.
- :func:`id_stamp`: the compact stamp that starts an id sorting by time (``20261205T100000Z``,
  e.g. a run id).
- :func:`parse_timestamp`: any RFC 3339 date-time with an offset (what other agents and older
  records wrote too), else None.

Standard library only: the bus imports nothing from ``fleet``, so the fleet uses it from here.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

# RFC 3339 date-time with an offset (what Python's isoformat writes); parsed after the match
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


def _utc(at: float | None) -> datetime:
    """``at`` (seconds since the epoch; now when None) in UTC."""
    return datetime.fromtimestamp(time.time() if at is None else at, UTC)


def utc_timestamp(at: float | None = None) -> str:
    """``at`` (now when None) as ``2026-12-05T10:00:00.123Z``."""
    return _utc(at).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def id_stamp(at: float | None = None) -> str:
    """``at`` (now when None) as ``20261205T100000Z``, to start an id that sorts by time."""
    return _utc(at).strftime("%Y%m%dT%H%M%SZ")


def parse_timestamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp with a UTC offset (``2026-11-28T01:02:03Z``), else None."""
    if not isinstance(value, str) or not TIMESTAMP.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        return None
