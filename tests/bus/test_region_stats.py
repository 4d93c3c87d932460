"""Delivery latency by the recipient's region: each delivery adds its queued-to-stored time
to per-recipient counters (:func:`bus.outbox.finish`); ``/bus/stats`` and ``/metrics`` sum
them by the region the registry gives each recipient."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from flask import Flask

from bus import outbox
from bus.stats import delivery_by_region
from bus.store import connect, init_db


def test_delivery_latency_is_summed_by_recipient_region(tmp_path: Path) -> None:
    store = tmp_path / "bus.sqlite3"
    init_db(store)
    db = connect(store)
    queued = time.time() - 2.0  # queued two seconds ago: a region that was cut off
    outbox.enqueue(db, {"id": "m-1", "type": "request"}, ["far", "near", "plain"], now=queued)
    owner = "1:w:0"
    seqs = [row["seq"] for row in outbox.claim(db, owner, 30, 3)]
    outbox.finish(db, owner, [outbox.Outcome(seq) for seq in seqs], {}, 0, 0)
    app = Flask(__name__)
    app.extensions["bus"] = SimpleNamespace(agents={
        "far": SimpleNamespace(region="us"), "near": SimpleNamespace(region="eu"),
        "plain": SimpleNamespace(region=None)})
    with app.app_context():
        regions = delivery_by_region(db)
    assert set(regions) == {"us", "eu", "none"}
    for entry in regions.values():
        assert entry["delivered"] == 1
        assert 2000 <= entry["latency_ms_mean"] < 10_000
        assert entry["latency_ms_sum"] == entry["latency_ms_mean"]
    db.close()
