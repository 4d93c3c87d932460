"""A dead letter's reason names the limit that decided: its age or the attempt cap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bus.worker import DeliveryWorker, Settings

HORIZON = 3 * 86400.0


def outcome_of(settings: Settings, attempts: int, age: float) -> Any:
    """What the worker decides for a row of that age after a failed attempt (unreachable)."""
    worker = DeliveryWorker(Path("unused.db"), None, "ezra", None, {},  # type: ignore[arg-type]
                            settings)
    row = {"seq": 7, "recipient": "ghost", "attempts": attempts,
           "created_at": time.time() - age}
    return worker._outcome(row, 0, "ConnectionRefusedError: refused", {})  # type: ignore[arg-type]


@pytest.mark.parametrize(("settings", "attempts", "age", "reason"), [
    (Settings(give_up_after=HORIZON), 12, HORIZON + 60,
     "gave up after 12 attempts: queued longer than the retry horizon (3 d)"),
    (Settings(give_up_after=HORIZON, max_attempts=20), 12, HORIZON + 60,
     "gave up after 12 attempts: queued longer than the retry horizon (3 d)"),
    (Settings(give_up_after=HORIZON, max_attempts=12), 12, 60,
     "gave up after 12 attempts: the most allowed (max_attempts)"),
    (Settings(give_up_after=7200.0), 3, 7300,
     "gave up after 3 attempts: queued longer than the retry horizon (2 h)"),
])
def test_dead_letter_reason_names_what_decided(settings: Settings, attempts: int, age: float,
                                               reason: str) -> None:
    decided = outcome_of(settings, attempts, age)
    assert (decided.seq, decided.dead_reason, decided.retry_at) == (7, reason, None)
    assert decided.error == "ConnectionRefusedError: refused"


def test_a_row_within_both_limits_is_retried() -> None:
    decided = outcome_of(Settings(give_up_after=HORIZON, max_attempts=12), 11, 60)
    assert decided.dead_reason is None and decided.retry_at is not None
