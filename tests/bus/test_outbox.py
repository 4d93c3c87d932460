"""The outbox and its delivery machinery without HTTP: leases, outcomes, backoff, writer."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import outbox
from bus.keys import parse_keyring, signing_key
from bus.signing import AuthError, Target, sign, verify
from bus.store import connect, init_db
from bus.worker import Settings
from bus.writer import GroupWriter
from tests.bus.conftest import KEYS, PUBLIC, rows
from tests.waiting import wait_for


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "bus.sqlite3"
    init_db(path)
    return path


@pytest.fixture
def db(store: Path) -> Iterator[sqlite3.Connection]:
    connection = connect(store)
    yield connection
    connection.close()


def queue(db: sqlite3.Connection, count: int, to: str = "bezalel", ttl: int | None = None) -> None:
    for n in range(count):
        message = {"id": f"m-{n}", "from": "ezra", "type": "alert", "payload": n, "ttl": ttl}
        outbox.enqueue(db, message, [to])


def test_enqueue_is_idempotent_per_recipient(db: sqlite3.Connection) -> None:
    message = {"id": "b-1", "from": "ezra", "type": "broadcast", "payload": 1}
    assert outbox.enqueue(db, message, ["bezalel", "allegro"]) == (True, ["bezalel", "allegro"])
    assert outbox.enqueue(db, message, ["ghost"]) == (False, ["bezalel", "allegro"])
    assert [row[0] for row in db.execute("SELECT recipient FROM outbox ORDER BY seq")] == [
        "bezalel", "allegro"]


def test_concurrent_claims_never_share_a_row(store: Path, db: sqlite3.Connection) -> None:
    queue(db, 200)
    claimed: dict[str, list[int]] = {}

    def claimer(owner: str) -> None:
        connection = connect(store)
        mine = claimed.setdefault(owner, [])
        try:
            while True:
                connection.execute("BEGIN IMMEDIATE")
                got = outbox.claim(connection, owner, 30, 7)
                connection.execute("COMMIT")
                if not got:
                    return
                mine.extend(row["seq"] for row in got)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(f"{n}:t:0",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [seq for seqs in claimed.values() for seq in seqs]
    assert sorted(every) == list(range(1, 201))
    assert rows(store, "SELECT MIN(attempts), MAX(attempts) FROM outbox") == [(1, 1)]


def test_leased_rows_wait_for_the_lease_or_a_dead_owner(db: sqlite3.Connection) -> None:
    queue(db, 3)
    assert len(outbox.claim(db, "999999999:x:0", 30, 10)) == 3
    assert outbox.claim(db, "1:y:0", 30, 10) == []
    assert len(outbox.claim(db, "1:y:0", 30, 10, now=time.time() + 31)) == 3


def test_leases_of_dead_processes_are_released(db: sqlite3.Connection) -> None:
    queue(db, 2)
    outbox.claim(db, "999999999.5:dead:0", 30, 1)  # no such pid
    outbox.claim(db, f"{outbox.process_tag()}:alive:0", 30, 1)
    assert outbox.release_dead_leases(db) == 1
    assert [row["id"] for row in outbox.claim(db, "2:z:0", 30, 10)] == ["m-0"]


def test_finish_records_each_outcome(db: sqlite3.Connection, store: Path) -> None:
    queue(db, 3)
    owner = "1:w:0"
    seqs = [row["seq"] for row in outbox.claim(db, owner, 30, 3)]
    outbox.finish(db, owner, [outbox.Outcome(seqs[0]),
                              outbox.Outcome(seqs[1], retry_at=time.time() + 60, error="HTTP 503"),
                              outbox.Outcome(seqs[2], dead_reason="ttl expired")], {}, 10, 0)
    assert rows(store, "SELECT id, lease_owner, last_error FROM outbox") == [
        ("m-1", None, "HTTP 503")]
    assert rows(store, "SELECT id, reason, attempts FROM dead_letters") == [
        ("m-2", "ttl expired", 1)]
    found = dict(rows(store, "SELECT name, value FROM counters"))
    # queued-to-stored time, summed (no row while it sums to 0 ms: bump() skips a zero)
    assert found.pop(outbox.DELIVERY_MS + "bezalel", 0) >= 0
    assert found == {"delivered": 1, "retried": 1, "dead_lettered": 1,
                     outbox.DELIVERY_COUNT + "bezalel": 1}


def test_unreachable_recipient_postpones_its_backlog(db: sqlite3.Connection,
                                                      store: Path) -> None:
    queue(db, 5)
    owner = "1:w:0"
    (first,) = outbox.claim(db, owner, 30, 1)
    later = time.time() + 60
    outbox.finish(db, owner, [outbox.Outcome(first["seq"], retry_at=later, error="refused")],
                  {"bezalel": (later, "refused")}, 2, 0)
    assert rows(store, "SELECT MIN(next_attempt_at) FROM outbox")[0][0] >= later
    assert rows(store, "SELECT attempts, COUNT(*) FROM outbox GROUP BY attempts") == [(1, 5)]
    outbox.finish(db, owner, [], {"bezalel": (later, "refused")}, 2, 0)  # nothing due: no change
    assert rows(store, "SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_backoff_doubles_with_jitter_up_to_the_ceiling() -> None:
    settings = Settings(retry_base=0.5, retry_max=8)
    for attempts, ceiling in ((1, 0.5), (2, 1), (3, 2), (5, 8), (40, 8)):
        delays = [settings.backoff(attempts) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1


def test_group_writer_isolates_a_failing_write(store: Path) -> None:
    writer = GroupWriter(store)
    assert writer.run(lambda db: db.execute(
        "INSERT INTO counters VALUES ('a', 1)").rowcount) == 1
    with pytest.raises(sqlite3.IntegrityError):
        writer.run(lambda db: db.execute("INSERT INTO counters VALUES ('a', 2)"))
    results: list[int] = []
    threads = [threading.Thread(target=lambda n=n: results.append(writer.run(
        lambda db: db.execute("INSERT INTO counters VALUES (?, ?)", (f"n{n}", n)).rowcount)))
        for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [1] * 20
    assert rows(store, "SELECT COUNT(*) FROM counters") == [(21,)]


def leading(writer: GroupWriter) -> bool:
    """Whether a caller of ``writer`` leads and has taken the queue as its batch (it then
    waits for the store's lock, if another process holds it): a write queued now waits."""
    with writer._mutex:
        return writer._leading and not writer._pending


def test_group_writer_batches_concurrent_writes(store: Path) -> None:
    """Many callers at once (some lead, most wait): each gets its own result, all stored."""
    writer = GroupWriter(store)
    results: dict[int, int] = {}

    def insert(n: int) -> None:
        def change(db: sqlite3.Connection) -> int:
            db.execute("INSERT INTO counters VALUES (?, ?)", (f"c{n}", n))
            return n
        results[n] = writer.run(change)

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n for n in range(200)}
    assert rows(store, "SELECT COUNT(*), SUM(value) FROM counters") == [(200, sum(range(200)))]


def test_group_writer_failing_write_in_a_batch_keeps_the_others(store: Path) -> None:
    """Writes queued behind a blocked commit form one batch; the failing one alone is undone."""
    writer = GroupWriter(store)
    writer.run(lambda db: db.execute("INSERT INTO counters VALUES ('taken', 0)"))
    other_process = os.open(f"{store}.lock", os.O_RDWR)
    fcntl.flock(other_process, fcntl.LOCK_EX)
    outcomes: dict[str, object] = {}

    def insert(name: str) -> None:
        try:
            outcomes[name] = writer.run(lambda db: db.execute(
                "INSERT INTO counters VALUES (?, 1)", (name,)).rowcount)
        except sqlite3.IntegrityError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=insert, args=(name,))
               for name in ("lead", "a", "taken", "b")]
    threads[0].start()
    wait_for(lambda: leading(writer), 5, "'lead' to take its batch and wait for the lock")
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(writer._pending) == 3, 5, "the other three to queue behind it")
    fcntl.flock(other_process, fcntl.LOCK_UN)
    os.close(other_process)
    for thread in threads:
        thread.join(5)
    assert {name: outcomes[name] for name in ("lead", "a", "b")} == {"lead": 1, "a": 1, "b": 1}
    assert isinstance(outcomes["taken"], sqlite3.IntegrityError)
    assert rows(store, "SELECT name, value FROM counters ORDER BY name") == [
        ("a", 1), ("b", 1), ("lead", 1), ("taken", 0)]


def test_group_writer_withdraws_a_write_that_timed_out(store: Path) -> None:
    """A write still queued when its caller gives up is never stored; the next one is."""
    writer = GroupWriter(store)
    writer.run(lambda db: db.execute("SELECT 1"))
    other_process = os.open(f"{store}.lock", os.O_RDWR)
    fcntl.flock(other_process, fcntl.LOCK_EX)  # the leader below waits for this lock
    leader = threading.Thread(target=writer.run, args=(
        lambda db: db.execute("INSERT INTO counters VALUES ('first', 1)"),))
    leader.start()
    wait_for(lambda: leading(writer), 5, "the leader to take its batch and wait for the lock")
    with pytest.raises(TimeoutError, match=r"not committed within 0\.2 s"):
        writer.run(lambda db: db.execute("INSERT INTO counters VALUES ('gave-up', 1)"),
                   timeout=0.2)
    fcntl.flock(other_process, fcntl.LOCK_UN)
    os.close(other_process)
    leader.join(5)
    writer.run(lambda db: db.execute("INSERT INTO counters VALUES ('after', 1)"), timeout=5)
    assert rows(store, "SELECT name FROM counters ORDER BY name") == [("after",), ("first",)]


def _target(headers: dict[str, str], query: str) -> Target:
    lower = {name.lower(): value for name, value in headers.items()}
    return Target("GET", "http", "gw:8080", "/messages", query, lower.get)


def test_signature_checks() -> None:
    keys = parse_keyring(PUBLIC)
    headers = sign(signing_key("ezra", KEYS["ezra"]), "GET", "http://gw:8080/messages?since=3")
    assert verify(_target(headers, "since=3"), b"", keys).name == "ezra"
    with pytest.raises(AuthError, match="does not verify with 'ezra:"):
        verify(_target(headers, "since=0"), b"", keys)
    with pytest.raises(AuthError, match=r"keyid 'ezra:[0-9a-f]{16}' is not trusted"):
        verify(_target(headers, "since=3"), b"", {})
    with pytest.raises(AuthError, match=r"is \d+ s behind this gateway's clock"):
        verify(_target(headers, "since=3"), b"", keys, now=time.time() + 400)


@pytest.mark.parametrize(("signed_at", "now", "error"), [
    # the signer's clock 301 s ahead: created 1301 (its fraction cut off) at 1000.7 here
    (1301.2, 1000.7, "created 1301 is 301 s ahead of this gateway's clock (1000; allowed: up "
                     "to 300 s)"),
    (699.7, 1000.7, "created 699 is 301 s behind this gateway's clock (1000; allowed: up to "
                    "300 s)"),
])
def test_clock_skew_error_names_the_real_skew(signed_at: float, now: float, error: str) -> None:
    keys = parse_keyring(PUBLIC)
    headers = sign(signing_key("ezra", KEYS["ezra"]), "GET", "http://gw:8080/messages?since=3",
                   now=signed_at)
    with pytest.raises(AuthError) as refused:
        verify(_target(headers, "since=3"), b"", keys, now=now)
    assert str(refused.value) == f"Signature-Input: {error}"


def test_clock_skew_at_the_limit_is_accepted() -> None:
    keys = parse_keyring(PUBLIC)
    headers = sign(signing_key("ezra", KEYS["ezra"]), "GET", "http://gw:8080/messages?since=3",
                   now=1300.9)
    assert verify(_target(headers, "since=3"), b"", keys, now=1000.2).name == "ezra"


def test_prune_keeps_unacked_and_recent_messages(db: sqlite3.Connection, store: Path) -> None:
    from bus.inbox_store import prune

    now = time.time()
    for n, acked in enumerate((None, now - 10 * 86400, now - 3600)):
        db.execute("INSERT INTO inbox (id, sender, recipient, type, payload, timestamp, format,"
                   " received_at, acked_at) VALUES (?, 'ezra', 'bezalel', 'alert', '1', 't',"
                   " 'fleet', ?, ?)", (f"m-{n}", now - 20 * 86400, acked))
    assert prune(db, now - 7 * 86400) == 1
    assert rows(store, "SELECT id FROM inbox ORDER BY id") == [("m-0",), ("m-2",)]
