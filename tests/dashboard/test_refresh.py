"""The dashboard's refresher: after the first fill a request is answered from the newest
probe at once, never waiting on the probe under way; an unwatched dashboard stops probing;
a probe that fails reaches the next request instead of a thread's traceback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.dashboard.data import Dashboard, Snapshot
from tests.waiting import wait_for


class Gated(Dashboard):
    """A dashboard whose probes (numbered from 1) each wait for the test's go."""

    def __init__(self, folder: Path, refresh_s: float, idle_s: float | None = None) -> None:
        super().__init__(folder / "registry.yaml", folder / "records", refresh_s=refresh_s,
                         idle_s=idle_s)
        self.taken = 0
        self.started = threading.Semaphore(0)  # one release per probe begun
        self.go = threading.Semaphore(0)  # one release lets one probe finish
        self.open = threading.Event()  # set: probes no longer wait
        self.fail = False

    def _take(self) -> Snapshot:
        self.taken += 1  # one probe at a time (the dashboard's own lock)
        number = self.taken
        self.started.release()
        if not self.open.is_set():
            assert self.go.acquire(timeout=30)
        if self.fail:
            raise RuntimeError("probe failed")
        return Snapshot(taken=str(number), fleet="loop", agents=(), runs=(),
                        deployed_release=None)

    def finish(self) -> None:
        self.open.set()
        self.go.release(100)
        self.stop()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    source = Gated(tmp_path, refresh_s=0.2)  # the refresher probes every 0.1 s
    yield source
    source.finish()


def in_thread(source: Dashboard) -> tuple[threading.Event, list[Snapshot]]:
    """Ask for a snapshot from another thread: (set when it returned, what it returned)."""
    returned, found = threading.Event(), []

    def ask() -> None:
        found.append(source.snapshot())
        returned.set()

    threading.Thread(target=ask, daemon=True).start()
    return returned, found


def test_after_the_first_fill_no_request_waits_on_a_probe(gated: Gated) -> None:
    returned, found = in_thread(gated)  # the first fill: this request probes itself
    assert gated.started.acquire(timeout=10)
    assert not gated.refreshing
    gated.go.release()
    assert returned.wait(10)
    assert found[0].taken == "1"

    assert gated.started.acquire(timeout=10)  # the refresher's probe, held by the test
    assert gated.refreshing
    returned, found = in_thread(gated)
    assert returned.wait(10)  # answered while that probe still runs
    assert found[0].taken == "1"

    gated.go.release()
    wait_for(lambda: gated.snapshot().taken == "2", 10, "the refresher's snapshot")


def test_an_unwatched_dashboard_stops_probing_until_asked_again(tmp_path: Path) -> None:
    source = Gated(tmp_path, refresh_s=0.2, idle_s=0.5)
    source.open.set()
    try:
        assert source.snapshot().taken == "1"
        assert source.refreshing
        wait_for(lambda: not source.refreshing, 10, "the refresher to stop unwatched")
        stopped_at = source.taken
        assert int(source.snapshot().taken) >= stopped_at  # the next request...
        assert source.refreshing  # ...starts it again
    finally:
        source.finish()


def test_a_failed_background_probe_reaches_the_next_request(gated: Gated) -> None:
    gated.open.set()
    assert gated.snapshot().taken == "1"
    gated.fail = True
    wait_for(lambda: not gated.refreshing, 10, "the refresher to end on the failed probe")

    def raises() -> bool:
        try:
            gated.snapshot()  # fresh for 0.1 s; then this request probes itself
        except RuntimeError as exc:
            return str(exc) == "probe failed"
        return False

    wait_for(raises, 10, "the failure to reach a request")
    assert not gated.refreshing
