"""Loss test (issue 9): 10,000 messages, the receiver killed -9 twice (the second time kept
down longer than the old 12-attempt retry horizon), the sender killed -9 once: all 10,000
in the inbox exactly once, 0 dead letters, 0 lost.

The retry schedule is shortened by configuration (``FLEET_BUS_RETRY_*``), not in the code
path: with the old default of 12 attempts the second outage would have dead-lettered the
backlog.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.bus.conftest import Fleet, rows
from tests.bus.test_durability import send_all
from tests.waiting import wait_for

pytestmark = pytest.mark.slow
COUNT = 10_000
SCHEDULE = {"FLEET_BUS_RETRY_BASE": "0.05", "FLEET_BUS_RETRY_MAX": "0.5",
            "FLEET_BUS_POLL_SECONDS": "0.2", "FLEET_BUS_GIVE_UP_AFTER": "3600"}
OLD_ATTEMPTS = 12


def old_horizon() -> float:
    """Longest time the old 12 attempts could cover with :data:`SCHEDULE` (no jitter)."""
    base, ceiling = float(SCHEDULE["FLEET_BUS_RETRY_BASE"]), float(SCHEDULE["FLEET_BUS_RETRY_MAX"])
    return sum(min(ceiling, base * 2 ** (n - 1)) for n in range(1, OLD_ATTEMPTS + 1))


def counter(store: Path, name: str) -> int:
    """A bus store's counter ``name`` (0 before its first bump)."""
    found = rows(store, f"SELECT value FROM counters WHERE name = '{name}'")
    return int(found[0][0]) if found else 0


def max_attempts(store: Path) -> int:
    """The most delivery attempts of a message still in a bus store's outbox."""
    return int(rows(store, "SELECT MAX(attempts) FROM outbox")[0][0] or 0)


def test_ten_thousand_messages_through_three_kills(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, dict(SCHEDULE))
    try:
        ezra, bezalel = fleet.start("ezra", "bezalel")
        ids = [f"loss-{n}" for n in range(COUNT)]
        sent: list[str] = []
        refused: list[str] = []
        senders = [threading.Thread(target=send_all, args=(ezra, ids[n::8], sent, 300, refused))
                   for n in range(8)]
        for thread in senders:
            thread.start()
        wait_for(lambda: len(sent) >= COUNT // 5, timeout=120, every=0.01)
        retried = counter(ezra.store, "retried")
        bezalel.kill()  # receiver, first time: down until ezra's delivery finds it down
        wait_for(lambda: counter(ezra.store, "retried") > retried, 60,
                 "ezra to retry a delivery to the killed receiver")
        bezalel.start()
        wait_for(lambda: len(sent) >= COUNT // 2, timeout=120, every=0.01)
        ezra.kill()  # sender: its outbox and the clients' retries carry on after the restart
        wait_for(lambda: refused, 60, "a client to find the sender down")
        ezra.start()
        wait_for(lambda: len(sent) >= COUNT * 7 // 10, timeout=120, every=0.01)
        bezalel.kill()  # receiver, second time: down longer than the old retry horizon
        killed = time.monotonic()
        tried = wait_for(lambda: time.monotonic() - killed > old_horizon() and (
            (most := max_attempts(ezra.store)) > OLD_ATTEMPTS and most), 120,
            lambda: f"more than {OLD_ATTEMPTS} attempts (now {max_attempts(ezra.store)}) and "
                    f"{old_horizon():g} s down", every=0.2)
        down = time.monotonic() - killed
        bezalel.start()
        for thread in senders:
            thread.join(300)
        assert sorted(sent) == sorted(ids)
        wait_for(lambda: rows(bezalel.store, "SELECT COUNT(*) FROM inbox")[0][0] >= COUNT,
                 timeout=180, every=0.5)
        wait_for(lambda: rows(ezra.store, "SELECT COUNT(*) FROM outbox") == [(0,)], timeout=60)
        got = [row[0] for row in rows(bezalel.store, "SELECT id FROM inbox WHERE sender = 'ezra'")]
        assert len(got) == COUNT and sorted(got) == sorted(ids)  # all, each once
        assert rows(ezra.store, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
        assert rows(ezra.store, "SELECT COUNT(*) FROM sent") == [(COUNT,)]
        assert down > old_horizon()
        assert tried > OLD_ATTEMPTS  # the old schedule would have given these rows up
    finally:
        fleet.stop()
