"""One time format (bus/timestamps.py): records, API answers and bus messages say "when" as
RFC 3339 UTC with milliseconds and ``Z``, ids start with a compact stamp, and one parser reads
both that and the offsets others write; nothing else formats or parses a time."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bus.sending import build
from bus.timestamps import id_stamp, parse_timestamp, utc_timestamp
from fleet.control.records import new_run_id
from fleet.webhook.runner import fleet_run_id

REPO = Path(__file__).resolve().parent.parent
OWNER = "bus/timestamps.py"
FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_a_timestamp_is_utc_with_milliseconds_and_z() -> None:
    assert utc_timestamp(0) == "1970-01-01T00:00:00.000Z"
    assert utc_timestamp(1_795_921_200.1234) == "2026-11-29T03:00:00.123Z"
    assert FORMAT.fullmatch(utc_timestamp())
    assert id_stamp(1_795_921_200.9) == "20261129T030000Z"


def test_timestamps_sort_as_the_times_do() -> None:
    times = [1_795_921_200.0, 1_795_921_200.5, 1_796_000_401.0, 1_796_086_800.0]
    assert sorted(map(utc_timestamp, reversed(times))) == list(map(utc_timestamp, times))


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-29T03:00:00.123Z", datetime(2026, 11, 29, 3, 0, 0, 123000, UTC)),
    ("2026-11-29T03:00:00Z", datetime(2026, 11, 29, 3, tzinfo=UTC)),
    ("2026-11-29t04:00:00.5+01:00",
     datetime(2026, 11, 29, 4, 0, 0, 500000, timezone(timedelta(hours=1)))),
    ("2026-11-29T03:00:00", None),  # no offset: not a time anybody can place
    ("2026-13-29T03:00:00Z", None),
    ("yesterday", None),
    (None, None),
])
def test_one_parser_reads_every_rfc3339_time(text: object, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected


def test_what_we_write_reads_back() -> None:
    at = 1_795_921_200.25
    parsed = parse_timestamp(utc_timestamp(at))
    assert parsed is not None and parsed.timestamp() == at


def test_run_ids_and_messages_use_it() -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", new_run_id())
    assert re.fullmatch(r"webhook-7-\d{8}T\d{6}Z", fleet_run_id(7))
    message = build(["a", "b"], "a", {"to": "b", "type": "alert", "payload": {}})
    assert FORMAT.fullmatch(message["timestamp"])


TIME_CALLS = {"strftime", "strptime", "isoformat", "fromisoformat"}


def time_text(tree: ast.AST) -> list[int]:
    """Lines that format or parse a time themselves (``strftime``, ``isoformat``, ...)."""
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and node.attr in TIME_CALLS)


# deploys/facts.py reads systemd's own format (systemctl show); bench/bus_bench.py times the
# bus to the microsecond with stamps of its own; fleet/node/nodectl.py is stdlib only (run
# with python3 -IS, no fleet package on its path) and writes the same format (utc_time).
OTHERS = {"deploys/facts.py", "bench/bus_bench.py", "fleet/node/nodectl.py"}


def test_nothing_else_formats_or_parses_a_time() -> None:
    found = [f"{path.relative_to(REPO)}:{line}"
             for package in ("fleet", "bus", "deploys", "bench")
             for path in sorted((REPO / package).rglob("*.py"))
             if str(path.relative_to(REPO)) not in {OWNER, *OTHERS}
             for line in time_text(ast.parse(path.read_text()))]
    assert found == []
    assert time_text(ast.parse("a.isoformat()\ntime.strftime('%Y')\nx.format()\n")) == [1, 2]
