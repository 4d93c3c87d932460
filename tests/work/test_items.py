"""The work item store (:mod:`fleet.node.work.items`): ids by issue URL (idempotent, also
under concurrent creators), legal transitions only, compare-and-set, bounded timelines and
item counts, and a kill -9 mid-write leaving the old row or the new one."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.replay import ReplayError
from fleet.node.work import items
from fleet.node.work.items import (
    STATES,
    TRANSITIONS,
    WORK_ID_RE,
    WorkConflictError,
    WorkFullError,
    WorkNotFound,
    WorkStateError,
    WorkValueError,
)

URL = "http://192.0.2.5:3000/acme/shop/issues/7"
API = "http://192.0.2.5:3000/api/v1"


def new(state: Path, number: int = 7, title: str = "Fix the parser") -> items.WorkItem:
    return items.create(state, "gitea", "acme/shop", number,
                        f"http://192.0.2.5:3000/acme/shop/issues/{number}", title, "code",
                        api_url=API)


def to_state(state: Path, item_id: str, target: str) -> items.WorkItem:
    """Walk an item from queued to ``target`` along legal changes."""
    if target == "queued":
        return items.get(state, item_id)
    item = items.start(state, item_id, "bezalel")
    if target == "working":
        return item
    if target == "proposed":
        return items.propose(state, item_id, "http://192.0.2.5:3000/acme/shop/pulls/9")
    if target == "failed":
        return items.fail(state, item_id, "tests still fail after 20 steps")
    return items.close(state, item_id, "issue closed by a person")


def test_an_item_is_created_queued_once_per_issue_url(tmp_path: Path) -> None:
    first = new(tmp_path)
    assert WORK_ID_RE.fullmatch(first["id"]) and first["id"] == items.work_id(
        "gitea", API, "acme/shop", 7)
    assert (first["state"], first["branch"], first["attempts"], first["assignee"]) == (
        "queued", "fleet/ISSUE-7", 0, None)
    again = new(tmp_path, title="another title")
    assert again == first
    assert [event["kind"] for event in items.timeline(tmp_path, first["id"])] == ["intake"]


def _create(state: str, barrier: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    barrier.wait()
    new(Path(state))


def test_two_concurrent_creators_make_one_item(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    workers = [context.Process(target=_create, args=(str(tmp_path), barrier)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    page = items.listing(tmp_path)
    assert len(page["items"]) == 1 and page["counts"]["queued"] == 1
    assert len(items.timeline(tmp_path, page["items"][0]["id"])) == 1


def _finish(state: str, item_id: str, version: int, number: int,
            barrier: multiprocessing.synchronize.Barrier) -> None:  # type: ignore[name-defined]
    barrier.wait()
    try:
        if number % 2:
            items.propose(Path(state), item_id, f"http://192.0.2.5/pulls/{number}", version)
        else:
            items.fail(Path(state), item_id, f"writer {number}", version)
    except WorkConflictError:
        sys.exit(3)


def test_of_concurrent_writers_that_read_the_same_version_exactly_one_wins(
        tmp_path: Path) -> None:
    item = items.start(tmp_path, new(tmp_path)["id"], "bezalel")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    writers = [context.Process(target=_finish, args=(str(tmp_path), item["id"],
                                                     item["version"], number, barrier))
               for number in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert sorted(writer.exitcode for writer in writers) == [0, 3, 3, 3]
    final = items.get(tmp_path, item["id"])
    assert final["version"] == item["version"] + 1
    assert [e["kind"] for e in items.timeline(tmp_path, item["id"])][2:] in (
        ["proposed"], ["failed"])


@pytest.mark.parametrize(("source", "target"), [
    (source, target) for source in STATES for target in STATES])
def test_only_the_legal_transitions_are_taken(tmp_path: Path, source: str, target: str) -> None:
    item = to_state(tmp_path, new(tmp_path)["id"], source)
    if (source, target) in TRANSITIONS:
        changed = items.transition(tmp_path, item["id"], target, version=item["version"])
        assert (changed["state"], changed["version"]) == (target, item["version"] + 1)
    else:
        with pytest.raises(WorkStateError) as refused:
            items.transition(tmp_path, item["id"], target, version=item["version"])
        assert str(refused.value) == f"{item['id']} is {source}: it cannot become {target}"
        assert items.get(tmp_path, item["id"]) == item


def test_of_two_writers_that_read_the_same_version_one_wins(tmp_path: Path) -> None:
    item = items.start(tmp_path, new(tmp_path)["id"], "bezalel")
    items.propose(tmp_path, item["id"], "http://192.0.2.5/pulls/1", version=item["version"])
    with pytest.raises(WorkConflictError, match=r"changed since it was read \(version 1, now "
                                                r"2: proposed\)"):
        items.fail(tmp_path, item["id"], "late", version=item["version"])
    assert items.get(tmp_path, item["id"])["state"] == "proposed"


@pytest.mark.parametrize(("state", "message"), [
    ("proposed", "is proposed: only a failed item is retried; its pull request is open "
                 "(http://192.0.2.5:3000/acme/shop/pulls/9): review it on the forge"),
    ("closed", "is closed: only a failed item is retried; it is closed (issue closed by a "
               "person)"),
    ("queued", "is queued: only a failed item is retried; it is queued already")])
def test_retry_of_an_item_not_failed_is_refused_with_the_reason(
        tmp_path: Path, state: str, message: str) -> None:
    item = to_state(tmp_path, new(tmp_path)["id"], state)
    with pytest.raises(WorkStateError) as refused:
        items.retry(tmp_path, item["id"])
    assert str(refused.value) == f"{item['id']} {message}"
    assert items.get(tmp_path, item["id"]) == item


def test_retry_requeues_a_failed_item_and_cancel_closes_it_once(tmp_path: Path) -> None:
    item = to_state(tmp_path, new(tmp_path)["id"], "failed")
    again = items.retry(tmp_path, item["id"], once=("operator", "sig-1"))
    assert (again["state"], again["reason"], again["assignee"]) == ("queued", None, None)
    with pytest.raises(ReplayError):
        items.cancel(tmp_path, item["id"], once=("operator", "sig-1"))
    closed = items.cancel(tmp_path, item["id"], once=("operator", "sig-2"))
    assert (closed["state"], closed["reason"]) == ("closed", "cancelled by the operator")
    assert [(e["kind"], e["detail"]) for e in items.timeline(tmp_path, item["id"])][-2:] == [
        ("retried", {"by": "operator", "failed": "tests still fail after 20 steps"}),
        ("cancelled", {"by": "operator", "was": "queued"})]
    with pytest.raises(WorkStateError, match="is closed: it cannot be cancelled"):
        items.cancel(tmp_path, item["id"])


def test_a_failure_reason_is_kept_escaped_and_bounded(tmp_path: Path) -> None:
    item = items.start(tmp_path, new(tmp_path)["id"], "bezalel")
    stored = items.fail(tmp_path, item["id"], "model said \x1b[2J" + "x" * 1000)
    assert stored["reason"] is not None and len(stored["reason"]) == items.MAX_REASON
    assert stored["reason"].startswith("model said \\x1b[2J")


def test_a_dead_worker_s_item_resumes(tmp_path: Path) -> None:
    item = items.start(tmp_path, new(tmp_path)["id"], "bezalel")
    resumed = items.resume(tmp_path, item["id"], "bezalel stopped answering")
    assert (resumed["state"], resumed["assignee"], resumed["attempts"]) == ("queued", None, 1)
    assert items.start(tmp_path, item["id"], "allegro")["attempts"] == 2


def test_the_timeline_keeps_the_newest_events_and_counts_the_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(items, "MAX_EVENTS", 5)
    item_id = new(tmp_path)["id"]
    for number in range(8):
        items.record(tmp_path, item_id, "turn", {"step": number})
    kept = items.timeline(tmp_path, item_id)
    assert [event["detail"] for event in kept] == [{"step": n} for n in range(3, 8)]
    assert items.get(tmp_path, item_id)["events_dropped"] == 4  # the intake and steps 0-2
    items.record(tmp_path, item_id, "tool", {"output": "x" * 10_000})
    assert len(items.timeline(tmp_path, item_id)[-1]["detail"]["truncated"]) < 4000
    with pytest.raises(WorkValueError, match="event kind 'chat' is not one of intake"):
        items.record(tmp_path, item_id, "chat")


def test_items_are_capped_dropping_the_oldest_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(items, "MAX_ITEMS", 3)
    first = new(tmp_path, 1)["id"]
    to_state(tmp_path, first, "closed")
    new(tmp_path, 2), new(tmp_path, 3)
    new(tmp_path, 4)  # the closed one goes
    with pytest.raises(WorkNotFound):
        items.get(tmp_path, first)
    with pytest.raises(WorkFullError, match="holds 3 items and too few are closed"):
        new(tmp_path, 5)


def test_lists_are_paged_newest_first_by_state(tmp_path: Path) -> None:
    made = [new(tmp_path, number)["id"] for number in range(1, 6)]
    to_state(tmp_path, made[1], "failed")
    first = items.listing(tmp_path, limit=2)
    assert [item["id"] for item in first["items"]] == made[:2:-1][:2]
    assert first["next"] == made[3]
    rest = items.listing(tmp_path, limit=10, after=first["next"])
    assert [item["id"] for item in rest["items"]] == [made[2], made[1], made[0]]
    assert rest["next"] is None
    assert items.listing(tmp_path, "failed")["items"][0]["id"] == made[1]
    assert first["counts"] == {"queued": 4, "working": 0, "proposed": 0, "failed": 1,
                               "closed": 0}
    with pytest.raises(WorkNotFound):
        items.listing(tmp_path, after="w-000000000000")


@pytest.mark.parametrize(("title", "message"), [
    ("", "title '' is not 1 to 200 characters"),
    ("x" * 201, "is not 1 to 200 characters"),
    ("fix\nrm -rf", "holds a newline at position 4: control characters are refused"),
    ("esc \x1b[31m", "holds an escape character at position 5")])
def test_titles_are_bounded_and_free_of_control_characters(
        tmp_path: Path, title: str, message: str) -> None:
    with pytest.raises(WorkValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        new(tmp_path, title=title)
    assert items.listing(tmp_path)["items"] == []


@given(st.text(max_size=300))
def test_every_accepted_title_is_short_and_printable(title: str) -> None:
    try:
        items.checked_text("title", title, items.MAX_TITLE)
    except WorkValueError:
        return
    assert 1 <= len(title) <= items.MAX_TITLE
    assert not any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in title)


@given(st.text(max_size=20))
def test_only_ids_of_the_shape_are_work_ids(value: str) -> None:
    assert items.is_work_id(value) == (len(value) == 14 and value.startswith("w-") and all(
        char in "0123456789abcdef" for char in value[2:]))


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fleet.node.work import items
    state, item_id = Path(sys.argv[1]), sys.argv[2]
    print("ready", flush=True)
    while True:
        item = items.get(state, item_id)
        if item["state"] == "queued":
            items.start(state, item_id, "bezalel")
        else:
            items.resume(state, item_id, "worker died")
        items.record(state, item_id, "turn", {"text": "x" * 2000})
""")


def test_kill_9_mid_write_leaves_the_old_row_or_the_new(tmp_path: Path) -> None:
    item_id = new(tmp_path)["id"]
    for _ in range(5):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), item_id],
                                  stdout=subprocess.PIPE, env={**os.environ})
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        for _ in range(20):  # let it write a while
            items.get(tmp_path, item_id)
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()
        item = items.get(tmp_path, item_id)
        assert item["state"] in ("queued", "working")
        assert (item["assignee"] is None) == (item["state"] == "queued")
        with contextlib.closing(sqlite3.connect(tmp_path / items.STORE)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            # every state change wrote its event in the same transaction
            kinds = db.execute("SELECT COUNT(*) FROM events WHERE kind IN ('routed', "
                               "'retried')").fetchone()[0]
        assert kinds + items.get(tmp_path, item_id)["events_dropped"] >= item["version"]


def test_an_items_id_is_its_source_and_number_never_the_page_a_forge_names(
        tmp_path: Path) -> None:
    """Outside attack r36 (F6): the id was the hash of the issue's web URL, which the forge
    answers, so forge A naming forge B's issue URL first took over B's item."""
    mine = items.create(tmp_path, "gitea", "acme/shop", 1, URL, "one", api_url=API)
    theirs = items.create(tmp_path, "github", "mallory/bait", 1, URL, "bait",
                          api_url="http://192.0.2.66/api")
    assert mine["id"] != theirs["id"]
    assert (items.get(tmp_path, mine["id"])["repo"], theirs["repo"]) == (
        "acme/shop", "mallory/bait")
