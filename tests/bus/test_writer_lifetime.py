"""The group writer's connection and lock file: closed by ``close()``, by the writer's
collection, and never used (nor closed) by a forked child, which opens its own."""

from __future__ import annotations

import gc
import os
import warnings
from pathlib import Path

from bus import store
from bus.writer import GroupWriter


def open_fds() -> set[str]:
    """This process's open file descriptors, by target."""
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def counters(path: Path) -> dict[str, int]:
    db = store.connect(path)
    try:
        return store.counters(db)
    finally:
        db.close()


def test_close_closes_both_and_the_next_write_opens_them_again(tmp_path: Path) -> None:
    path = tmp_path / store.STORE_NAME
    store.init_db(path)
    writer = GroupWriter(path)
    writer.run(lambda db: store.bump(db, "n"))
    assert {str(path), store.lock_path(path)} <= open_fds()
    writer.close()
    assert not {str(path), store.lock_path(path)} & open_fds()
    writer.run(lambda db: store.bump(db, "n"))
    writer.close()
    assert counters(path) == {"n": 2}


def test_a_dropped_writer_closes_its_connection(tmp_path: Path) -> None:
    path = tmp_path / store.STORE_NAME
    store.init_db(path)
    writer = GroupWriter(path)
    writer.run(lambda db: store.bump(db, "n"))
    del writer
    gc.collect()  # an unclosed connection would fail the test here (tests/leaks.py)
    assert not {str(path), store.lock_path(path)} & open_fds()


def test_a_forked_child_writes_on_its_own_connection(tmp_path: Path) -> None:
    path = tmp_path / store.STORE_NAME
    store.init_db(path)
    writer = GroupWriter(path)
    writer.run(lambda db: store.bump(db, "n"))
    with warnings.catch_warnings():  # 3.12+: other tests' threads may still be running
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: a write reopens; the parent's connection is left alone
        code = 1
        try:
            writer.run(lambda db: store.bump(db, "n"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.run(lambda db: store.bump(db, "n"))  # the parent's connection still works
    writer.close()
    assert counters(path) == {"n": 3}
