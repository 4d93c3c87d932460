"""Every store we keep opens its database the one way (:func:`bus.sqlite.open_db`): commits on
disk once they returned (``synchronous=FULL``), a 30 s wait for locks, rows by name."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bus import store
from fleet.node.tools import records
from fleet.webhook import db as webhook_db


def bus_store(folder: Path) -> sqlite3.Connection:
    path = folder / "bus.sqlite3"
    store.init_db(path)
    return store.connect(path)


@pytest.mark.parametrize("opened", [
    bus_store,
    lambda folder: records.connect(folder),
    lambda folder: webhook_db.connect(folder / "webhook.sqlite3"),
], ids=["bus", "tool-calls", "webhook"])
def test_every_store_opens_its_database_the_one_way(
        tmp_path: Path, opened: Callable[[Path], sqlite3.Connection]) -> None:
    db = opened(tmp_path)
    try:
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.isolation_level is None and db.row_factory is sqlite3.Row
    finally:
        db.close()
