"""Work items of the orchestrator: ``work.sqlite3`` (SQLite, WAL) in its state dir.

One item per issue of a forge (its id is derived from the issue's html URL, so taking in the
same issue twice, even by two intakes at once, finds the first item), with a state
(:data:`STATES`), the worker it went to, its branch ``fleet/ISSUE-N``, the pull request it
opened, the reason it failed or closed, and a timeline of events (:data:`EVENT_KINDS`).

States change along :data:`TRANSITIONS` only, each change compare-and-set on the item's
state and version inside one ``BEGIN IMMEDIATE`` transaction: of two writers that read the
same version one wins, the other gets :class:`WorkConflictError`; a process killed mid-write
leaves the old row or the new one. Bounded: :data:`MAX_EVENTS` events per item (the oldest
go, counted in ``events_dropped``), :data:`MAX_ITEMS` items (the oldest closed ones go; when
none can, intake is refused) and lists are paged.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, cast

from bus import replay
from bus.errors import BusError
from bus.sqlite import immediate, store
from bus.timestamps import utc_timestamp
from fleet.core.registry import printable
from fleet.core.validate import unsafe_character

STORE = "work.sqlite3"
STATES = ("queued", "working", "proposed", "failed", "closed")
FORGES = ("gitea", "github", "gitlab")
EVENT_KINDS = ("intake", "routed", "resumed", "turn", "tool", "test", "pushed", "proposed",
               "failed", "retried", "cancelled", "closed")
TRANSITIONS = frozenset({
    ("queued", "working"), ("working", "proposed"), ("working", "failed"),
    ("working", "queued"),  # its worker died: the item resumes
    ("proposed", "closed"), ("failed", "queued"),  # retry
    ("queued", "closed"), ("working", "closed"), ("failed", "closed"),  # cancel
})
"""Every legal ``(from, to)`` state change."""
WORK_ID_RE = re.compile(r"w-[0-9a-f]{12}")
WORK_ID_RULE = "'w-' and 12 lowercase hex digits (as `fleet work list` shows them)"
REPO_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){1,4}")
URL_RE = re.compile(r"https?://[^\s\x00-\x1f\x7f]{1,1000}")
CAPABILITY_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")  # an agent's name (fleet.core.registry.NAME_RE)
MAX_TITLE = 200
MAX_REASON = 500
MAX_DETAIL = 4000
"""The longest event detail, as JSON; a longer one is kept cut, marked ``truncated``."""
MAX_EVENTS = 200
MAX_ITEMS = 10_000
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
CANCELLED = "cancelled by the operator"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, forge TEXT NOT NULL,
    repo TEXT NOT NULL, issue INTEGER NOT NULL, issue_url TEXT NOT NULL, title TEXT NOT NULL,
    capability TEXT, assignee TEXT, state TEXT NOT NULL, branch TEXT NOT NULL, pr_url TEXT,
    reason TEXT, attempts INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0,
    events_dropped INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL, updated TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS items_by_state ON items (state, seq)",
    """CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, at TEXT NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_by_item ON events (item, seq)",
    replay.SCHEMA,
)
Detail = dict[str, Any] | Callable[["WorkItem"], dict[str, Any]] | None
"""An event's detail, or a function of the item as read in the transaction giving it."""
FIELDS = ("id, forge, repo, issue, issue_url, title, capability, assignee, state, branch, "
          "pr_url, reason, attempts, version, events_dropped, created, updated")


class WorkItemError(BusError):
    """A work item cannot be stored, found or changed as asked."""


class WorkValueError(WorkItemError, ValueError):
    """A value of a work item breaks its rule (named in the message)."""


class WorkNotFound(WorkItemError, LookupError):
    """No work item has this id."""


class WorkStateError(WorkItemError):
    """The change is not legal from the item's state (:data:`TRANSITIONS`)."""


class WorkConflictError(WorkStateError):
    """Another writer changed the item since it was read (its version moved on)."""


class WorkFullError(WorkItemError):
    """The store holds :data:`MAX_ITEMS` items and none is closed, so none can go."""


class Event(TypedDict):
    """One event of an item's timeline."""

    seq: int
    at: str
    kind: str
    detail: dict[str, Any]


class WorkItem(TypedDict):
    """One work item, as the API answers it."""

    id: str
    forge: str
    repo: str
    issue: int
    issue_url: str
    title: str
    capability: str | None
    assignee: str | None
    state: str
    branch: str
    pr_url: str | None
    reason: str | None
    attempts: int
    version: int
    events_dropped: int
    created: str
    updated: str


class Page(TypedDict):
    """One page of items, newest first; ``next``: the ``after`` of the next page (None: the
    last page); ``counts``: how many items each state holds in all."""

    items: list[WorkItem]
    next: str | None
    counts: dict[str, int]


def work_id(forge: str, api_url: str, repo: str, issue: int) -> str:
    """The id of the item of issue ``issue`` of ``repo`` on the forge at ``api_url``: ``w-``
    and 12 hex of their sha256. Not of the issue's web URL: a forge names that, and one forge
    could name another source's issue and take over its item."""
    key = f"{forge}\n{api_url.rstrip('/')}\n{repo.lower()}\n{issue}"
    return "w-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def is_work_id(value: object) -> bool:
    """Whether ``value`` is a work item id (:data:`WORK_ID_RULE`)."""
    return isinstance(value, str) and WORK_ID_RE.fullmatch(value) is not None


def shown(value: object) -> str:
    """``value`` in a message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def checked_text(name: str, value: object, limit: int) -> str:
    """``value`` as a one-line text of at most ``limit`` characters, else
    :class:`WorkValueError` naming the rule."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise WorkValueError(f"{name} {shown(value)} is not 1 to {limit} characters")
    bad = unsafe_character(value)
    if bad:
        raise WorkValueError(f"{name} {shown(value)} holds {bad}: control characters are "
                             "refused")
    return value


def _checked(name: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise WorkValueError(f"{name} {shown(value)} is not {rule}")
    return value


def checked_id(value: object) -> str:
    """A work item id, else :class:`WorkValueError` naming :data:`WORK_ID_RULE`."""
    return _checked("work item id", value, WORK_ID_RE, WORK_ID_RULE)


def bounded_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """An event's detail as it is kept: JSON of at most :data:`MAX_DETAIL` characters (a
    longer one is kept as its beginning, ``{"truncated": ...}``)."""
    text = json.dumps(detail or {}, default=str)
    if len(text) <= MAX_DETAIL:
        loaded: dict[str, Any] = json.loads(text)
        return loaded
    return {"truncated": text[:MAX_DETAIL - 100]}


def path_of(state_dir: str | Path) -> Path:
    return Path(state_dir) / STORE


@contextmanager
def connect(state_dir: str | Path) -> Iterator[sqlite3.Connection]:
    """The work store (created on first use, WAL), closed again on leaving."""
    with store(path_of(state_dir), SCHEMA, "call_ids") as db:  # intake and gateway may create
        yield db


def _item(row: sqlite3.Row) -> WorkItem:
    return cast(WorkItem, dict(row))


def _row(db: sqlite3.Connection, item_id: str) -> WorkItem:
    row = db.execute(f"SELECT {FIELDS} FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise WorkNotFound(f"no work item {item_id}", hint="See `fleet work list`.")
    return _item(row)


def _add_event(db: sqlite3.Connection, item_id: str, kind: str, detail: dict[str, Any] | None,
               at: str) -> None:
    """Append an event; the oldest go (counted) when the item has :data:`MAX_EVENTS`."""
    if kind not in EVENT_KINDS:
        raise WorkValueError(f"event kind {shown(kind)} is not one of {', '.join(EVENT_KINDS)}")
    db.execute("INSERT INTO events (item, at, kind, detail) VALUES (?, ?, ?, ?)",
               (item_id, at, kind, json.dumps(bounded_detail(detail))))
    over = db.execute("SELECT COUNT(*) FROM events WHERE item = ?",
                      (item_id,)).fetchone()[0] - MAX_EVENTS
    if over > 0:
        db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE item = ? "
                   "ORDER BY seq LIMIT ?)", (item_id, over))
        db.execute("UPDATE items SET events_dropped = events_dropped + ? WHERE id = ?",
                   (over, item_id))


def _make_room(db: sqlite3.Connection) -> None:
    """Drop the oldest closed items over :data:`MAX_ITEMS` - 1; :class:`WorkFullError` when
    none is closed."""
    over = db.execute("SELECT COUNT(*) FROM items").fetchone()[0] - MAX_ITEMS + 1
    if over <= 0:
        return
    gone = [row[0] for row in db.execute(
        "SELECT id FROM items WHERE state = 'closed' ORDER BY seq LIMIT ?", (over,))]
    if len(gone) < over:
        raise WorkFullError(f"the work store holds {MAX_ITEMS} items and too few are closed "
                            "to make room", hint="Cancel or close items (`fleet work cancel`).")
    marks = ", ".join("?" * len(gone))
    db.execute(f"DELETE FROM events WHERE item IN ({marks})", gone)
    db.execute(f"DELETE FROM items WHERE id IN ({marks})", gone)


def create(state_dir: str | Path, forge: str, repo: str, issue: int, issue_url: str,
           title: str, capability: str | None = None, now: float | None = None, *,
           api_url: str) -> WorkItem:
    """The item of issue ``issue`` of ``repo`` on the forge at ``api_url`` (its page at
    ``issue_url``): created ``queued`` with an ``intake`` event, or the one already there
    (also when another intake creates it at the same time). :class:`WorkValueError` for a
    value that breaks its rule."""
    if forge not in FORGES:
        raise WorkValueError(f"forge {shown(forge)} is not one of {', '.join(FORGES)}")
    _checked("repo", repo, REPO_RE, "owner/name (letters, digits, '_', '.', '-')")
    if isinstance(issue, bool) or not isinstance(issue, int) or not 0 < issue < 2**53:
        raise WorkValueError(f"issue number {shown(issue)} is not a positive integer")
    _checked("issue url", issue_url, URL_RE, "an http(s) URL of up to 1000 characters")
    _checked("api url", api_url, URL_RE, "an http(s) URL of up to 1000 characters")
    checked_text("title", title, MAX_TITLE)
    if capability is not None:
        _checked("capability", capability, CAPABILITY_RE, "a capability name")
    item_id, at = work_id(forge, api_url, repo, issue), utc_timestamp(now)
    with connect(state_dir) as db, immediate(db):
        if db.execute("SELECT 1 FROM items WHERE id = ?", (item_id,)).fetchone() is None:
            _make_room(db)
            db.execute("INSERT INTO items (id, forge, repo, issue, issue_url, title, "
                       "capability, state, branch, created, updated) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                       (item_id, forge, repo, issue, issue_url, title, capability,
                        f"fleet/ISSUE-{issue}", at, at))
            _add_event(db, item_id, "intake", {"forge": forge, "repo": repo, "issue": issue,
                                               "url": issue_url}, at)
        return _row(db, item_id)


def get(state_dir: str | Path, item_id: str) -> WorkItem:
    """The item ``item_id`` (:class:`WorkNotFound` when there is none)."""
    checked_id(item_id)
    if not path_of(state_dir).exists():
        raise WorkNotFound(f"no work item {item_id}", hint="See `fleet work list`.")
    with connect(state_dir) as db:
        return _row(db, item_id)


def timeline(state_dir: str | Path, item_id: str) -> list[Event]:
    """The item's kept events, oldest first (:class:`WorkNotFound` when there is none)."""
    checked_id(item_id)
    with connect(state_dir) as db:
        _row(db, item_id)
        rows = db.execute("SELECT seq, at, kind, detail FROM events WHERE item = ? "
                          "ORDER BY seq", (item_id,)).fetchall()
    return [Event(seq=row["seq"], at=row["at"], kind=row["kind"],
                  detail=json.loads(row["detail"])) for row in rows]


def record(state_dir: str | Path, item_id: str, kind: str,
           detail: dict[str, Any] | None = None, now: float | None = None) -> None:
    """Add an event (a model turn, a tool call, a test run, a push ...) to the timeline."""
    checked_id(item_id)
    with connect(state_dir) as db, immediate(db):
        _row(db, item_id)
        _add_event(db, item_id, kind, detail, utc_timestamp(now))


def counts(db: sqlite3.Connection) -> dict[str, int]:
    """How many items each state holds (every state named, 0 too)."""
    found = dict.fromkeys(STATES, 0)
    for row in db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
        found[row[0]] = row[1]
    return found


def listing(state_dir: str | Path, state: str | None = None, limit: int = DEFAULT_LIMIT,
            after: str | None = None) -> Page:
    """A page of items, newest first: in ``state`` (any when None), at most ``limit``, older
    than the item ``after`` (:class:`WorkNotFound` when there is no such item)."""
    if state is not None and state not in STATES:
        raise WorkValueError(f"state {shown(state)} is not one of {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise WorkValueError(f"limit {limit} is not 1 to {MAX_LIMIT}")
    if not path_of(state_dir).exists() and after is None:
        return Page(items=[], next=None, counts=dict.fromkeys(STATES, 0))
    with connect(state_dir) as db:
        before = 2**62
        if after is not None:
            found = db.execute("SELECT seq FROM items WHERE id = ?",
                               (checked_id(after),)).fetchone()
            if found is None:
                raise WorkNotFound(f"no work item {after} to page after",
                                   hint="Start again without `after`.")
            before = found[0]
        rows = db.execute(f"SELECT {FIELDS} FROM items WHERE seq < ? AND (? IS NULL OR "
                          "state = ?) ORDER BY seq DESC LIMIT ?",
                          (before, state, state, limit + 1)).fetchall()
        items = [_item(row) for row in rows[:limit]]
        return Page(items=items, next=items[-1]["id"] if len(rows) > limit else None,
                    counts=counts(db))


def transition(state_dir: str | Path, item_id: str, to: str, *, version: int | None = None,
               event: tuple[str, Detail] | None = None,
               once: tuple[str, str] | None = None, now: float | None = None,
               refuse: Callable[[WorkItem], str | None] | None = None,
               **fields: Any) -> WorkItem:
    """Move the item to state ``to`` and set ``fields`` (assignee, pr_url, reason, attempts),
    with ``event`` added to its timeline, in one transaction; the item as stored after.

    Compare-and-set: ``version`` is the version the caller read (None: the current one);
    :class:`WorkConflictError` when the item has moved on since, :class:`WorkStateError`
    when ``(state, to)`` is not in :data:`TRANSITIONS`. ``once``: the ``(caller, request
    id)`` of the signed request asking, claimed first in a transaction of its own, so a
    request refused for the item's state stays used and cannot succeed when replayed later
    (:class:`bus.replay.ReplayError` for a replay: nothing changes). ``refuse(item)``: why
    this change is refused to the item as read in the transaction (None: it is not)."""
    checked_id(item_id)
    if to not in STATES:
        raise WorkValueError(f"state {shown(to)} is not one of {', '.join(STATES)}")
    unknown = set(fields) - {"assignee", "pr_url", "reason", "attempts"}
    if unknown:
        raise WorkValueError(f"{', '.join(sorted(unknown))}: not a field a change sets")
    if fields.get("reason") is not None:  # a model's or a forge's words: kept, escaped
        fields["reason"] = printable(str(fields["reason"]))[:MAX_REASON] or "-"
    if fields.get("pr_url") is not None:
        _checked("pull request url", fields["pr_url"], URL_RE, "an http(s) URL")
    if fields.get("assignee") is not None:
        _checked("assignee", fields["assignee"], NAME_RE, "an agent's name")
    at = utc_timestamp(now)
    if once is not None:
        with connect(state_dir) as db, immediate(db):
            replay.prune(db)
            replay.claim(db, *once)
    with connect(state_dir) as db, immediate(db):
        item = _row(db, item_id)
        if version is not None and item["version"] != version:
            raise WorkConflictError(
                f"{item_id} changed since it was read (version {version}, now "
                f"{item['version']}: {item['state']})", hint="Read it again and retry.")
        why = refuse(item) if refuse is not None else None
        if why:
            raise WorkStateError(why, hint="See `fleet work show ID`.")
        if (item["state"], to) not in TRANSITIONS:
            raise WorkStateError(f"{item_id} is {item['state']}: it cannot become {to}")
        sets = {"state": to, "updated": at, **fields}
        assignments = ", ".join(f"{name} = :{name}" for name in sets)
        changed = db.execute(
            f"UPDATE items SET {assignments}, version = version + 1 WHERE id = :id AND "
            "state = :was AND version = :version",
            {**sets, "id": item_id, "was": item["state"], "version": item["version"]})
        if changed.rowcount != 1:  # cannot happen inside BEGIN IMMEDIATE; kept as the rule
            raise WorkConflictError(f"{item_id} changed while it was written")
        if event is not None:
            kind, detail = event
            _add_event(db, item_id, kind, detail(item) if callable(detail) else detail, at)
        return _row(db, item_id)


def start(state_dir: str | Path, item_id: str, assignee: str, version: int | None = None,
          now: float | None = None) -> WorkItem:
    """queued -> working on ``assignee`` (a ``routed`` event; one attempt more)."""
    item = get(state_dir, item_id)
    return transition(state_dir, item_id, "working", version=item["version"]
                      if version is None else version, assignee=assignee,
                      attempts=item["attempts"] + 1, reason=None,
                      event=("routed", {"assignee": assignee, "attempt": item["attempts"] + 1}),
                      now=now)


def propose(state_dir: str | Path, item_id: str, pr_url: str, version: int | None = None,
            now: float | None = None) -> WorkItem:
    """working -> proposed: its pull request is open at ``pr_url``."""
    return transition(state_dir, item_id, "proposed", version=version, pr_url=pr_url,
                      event=("proposed", {"pr_url": pr_url}), now=now)


def fail(state_dir: str | Path, item_id: str, reason: str, version: int | None = None,
         now: float | None = None) -> WorkItem:
    """working -> failed, with the reason."""
    return transition(state_dir, item_id, "failed", version=version, reason=reason,
                      event=("failed", {"reason": reason[:MAX_REASON]}), now=now)


def resume(state_dir: str | Path, item_id: str, reason: str, version: int | None = None,
           now: float | None = None) -> WorkItem:
    """working -> queued: its worker died (``reason``); it is routed again."""
    return transition(state_dir, item_id, "queued", version=version, assignee=None,
                      event=("retried", {"reason": reason[:MAX_REASON], "by": "resume"}),
                      now=now)


def close(state_dir: str | Path, item_id: str, reason: str, version: int | None = None,
          now: float | None = None) -> WorkItem:
    """-> closed by a person on the forge (the issue closed, the PR merged or closed)."""
    return transition(state_dir, item_id, "closed", version=version, reason=reason,
                      event=("closed", {"reason": reason[:MAX_REASON]}), now=now)


def _retry_refused(item: WorkItem) -> str | None:
    if item["state"] == "failed":
        return None
    why = {"proposed": f"its pull request is open ({item['pr_url']}): review it on the forge",
           "closed": f"it is closed ({item['reason'] or 'no reason kept'})",
           "queued": "it is queued already", "working": "a worker is on it"}
    return (f"{item['id']} is {item['state']}: only a failed item is retried; "
            f"{why[item['state']]}")


def retry(state_dir: str | Path, item_id: str, once: tuple[str, str] | None = None,
          now: float | None = None) -> WorkItem:
    """failed -> queued (the operator's retry); :class:`WorkStateError` naming why for any
    other state."""
    return transition(state_dir, item_id, "queued", assignee=None, reason=None, once=once,
                      refuse=_retry_refused, now=now,
                      event=("retried", lambda item: {"by": "operator",
                                                      "failed": item["reason"]}))


def _cancel_refused(item: WorkItem) -> str | None:
    if item["state"] == "proposed":
        return (f"{item['id']} is proposed: it cannot be cancelled; its pull request is open "
                f"({item['pr_url']}): close it on the forge")
    if item["state"] == "closed":
        return f"{item['id']} is closed: it cannot be cancelled; it is closed already"
    return None


def cancel(state_dir: str | Path, item_id: str, once: tuple[str, str] | None = None,
           now: float | None = None) -> WorkItem:
    """queued, working or failed -> closed (the operator's cancel); :class:`WorkStateError`
    for a proposed or closed item."""
    return transition(state_dir, item_id, "closed", reason=CANCELLED, once=once,
                      refuse=_cancel_refused, now=now,
                      event=("cancelled", lambda item: {"by": "operator",
                                                        "was": item["state"]}))
