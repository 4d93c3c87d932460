"""The bus messages of autonomous work, checked strictly where they are read.

- ``work.item`` (orchestrator -> worker): one work item to do (:class:`ItemOrder`); the worker
  answers with a ``response`` ``{"accepted": ID}``, ``{"busy": ID}`` (it keeps one item at a
  time: the orchestrator keeps the item queued) or ``{"refused": REASON}``.
- ``work.event`` (worker -> orchestrator): ``{item, kind, detail}``, one event of the item's
  timeline (a model turn, a tool call, a test run, a push ...).
- ``work.outcome`` (worker -> orchestrator): ``{item, state, reason, pr_url}``, how the item
  ended (``proposed`` or ``failed``).

The bus has checked the signature of every message (its ``from``); who may send which is
checked by the reader (the orchestrator only sends items; an item's assignee only reports it).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from fleet.core.errors import FleetError
from fleet.core.work_config import WorkConfig, WorkSource
from fleet.node.work.items import (
    FORGES,
    MAX_REASON,
    MAX_TITLE,
    URL_RE,
    WORK_ID_RE,
    WorkValueError,
    bounded_detail,
    checked_text,
    shown,
)
from fleet.node.work.repo_loop import MAX_ISSUE_TEXT, Task

ITEM = "work.item"
EVENT = "work.event"
OUTCOME = "work.outcome"
ITEM_FIELDS = ("item", "issue", "title", "body", "issue_url", "forge", "repo", "git_url",
               "base")
WORKER_EVENTS = ("resumed", "turn", "tool", "test", "pushed", "proposed", "failed")
OUTCOMES = ("proposed", "failed")
MAX_BODY = MAX_ISSUE_TEXT
BRANCH_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_./-]{0,98}[A-Za-z0-9_])?")
BRANCH_RULE = ("a branch name of 1-100 letters, digits and '_', '.', '/', '-' (no '..', '//', "
               "'.lock', not starting with '.', '/' or '-')")


class WorkMessageError(FleetError):
    """A work message is malformed, or its sender may not send it (named in the message)."""


def checked_branch(value: object) -> str:
    """``value`` as a git branch name safe for argv and refs; else :class:`WorkMessageError`."""
    if (not isinstance(value, str) or not BRANCH_RE.fullmatch(value) or ".." in value
            or "//" in value or value.endswith(".lock") or "/." in value):
        raise WorkMessageError(f"base branch {shown(value)} is not {BRANCH_RULE}")
    return value


def _issue_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**53:
        raise WorkMessageError(f"issue number {shown(value)} is not a positive integer")
    return value


def _item_id(value: object) -> str:
    if not isinstance(value, str) or not WORK_ID_RE.fullmatch(value):
        raise WorkMessageError(f"item {shown(value)} is not a work item id")
    return value


@dataclass(frozen=True)
class ItemOrder:
    """A ``work.item`` payload: the item, its issue, and the source it comes from."""

    item: str
    issue: int
    title: str
    body: str
    issue_url: str
    forge: str
    repo: str
    git_url: str
    base: str

    def payload(self) -> dict[str, Any]:
        return asdict(self)

    def task(self) -> Task:
        return Task(self.item, self.issue, self.title, self.body, self.issue_url,
                    self.git_url, self.base)


def read_order(payload: object, work: WorkConfig | None) -> tuple[ItemOrder, WorkSource]:
    """The order in a ``work.item`` payload and the registry's source it names (its
    ``git_url``, ``forge`` and ``repo`` must be one source's); :class:`WorkMessageError`
    naming the first problem."""
    if not isinstance(payload, dict) or set(payload) != set(ITEM_FIELDS):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise WorkMessageError(f"a work.item payload has exactly {', '.join(ITEM_FIELDS)}; "
                               f"got {shown(keys)}")
    if work is None:
        raise WorkMessageError("this agent's registry has no work: section")
    try:
        title = checked_text("title", payload["title"], MAX_TITLE)
    except WorkValueError as exc:
        raise WorkMessageError(str(exc)) from None
    body = payload["body"]
    if not isinstance(body, str) or len(body) > MAX_BODY or "\x00" in body:
        raise WorkMessageError(f"body is not a text of at most {MAX_BODY} characters")
    url = payload["issue_url"]
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise WorkMessageError(f"issue_url {shown(url)} is not an http(s) URL")
    if payload["forge"] not in FORGES:
        raise WorkMessageError(f"forge {shown(payload['forge'])} is not one of "
                               f"{', '.join(FORGES)}")
    source = next((source for source in work.sources if source.git_url == payload["git_url"]),
                  None)
    if source is None:
        raise WorkMessageError(f"git_url {shown(payload['git_url'])} is not a git_url of the "
                               "registry's work sources")
    if (source.forge, source.repo) != (payload["forge"], payload["repo"]):
        raise WorkMessageError(f"forge {shown(payload['forge'])} and repo "
                               f"{shown(payload['repo'])} are not those of the source of "
                               f"{source.git_url}")
    order = ItemOrder(_item_id(payload["item"]), _issue_number(payload["issue"]), title, body,
                      url, source.forge, source.repo, source.git_url,
                      checked_branch(payload["base"]))
    return order, source


def event_payload(item: str, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"item": item, "kind": kind, "detail": bounded_detail(detail)}


def outcome_payload(item: str, state: str, reason: str, pr_url: str | None) -> dict[str, Any]:
    return {"item": item, "state": state, "reason": reason[:MAX_REASON], "pr_url": pr_url}


def read_event(payload: object) -> tuple[str, str, dict[str, Any]]:
    """``(item, kind, detail)`` of a ``work.event`` payload; else :class:`WorkMessageError`."""
    if not isinstance(payload, dict) or set(payload) != {"item", "kind", "detail"}:
        raise WorkMessageError("a work.event payload has exactly item, kind, detail")
    if payload["kind"] not in WORKER_EVENTS:
        raise WorkMessageError(f"event kind {shown(payload['kind'])} is not one of "
                               f"{', '.join(WORKER_EVENTS)}")
    if not isinstance(payload["detail"], dict):
        raise WorkMessageError("an event's detail is not an object")
    return _item_id(payload["item"]), payload["kind"], bounded_detail(payload["detail"])


def read_outcome(payload: object) -> tuple[str, str, str, str | None]:
    """``(item, state, reason, pr_url)`` of a ``work.outcome`` payload; else
    :class:`WorkMessageError`."""
    if not isinstance(payload, dict) or set(payload) != {"item", "state", "reason", "pr_url"}:
        raise WorkMessageError("a work.outcome payload has exactly item, state, reason, pr_url")
    state, reason, pr_url = payload["state"], payload["reason"], payload["pr_url"]
    if state not in OUTCOMES:
        raise WorkMessageError(f"outcome {shown(state)} is not one of {', '.join(OUTCOMES)}")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise WorkMessageError(f"reason is not a text of at most {MAX_REASON} characters")
    if state == "proposed" and not (isinstance(pr_url, str) and URL_RE.fullmatch(pr_url)):
        raise WorkMessageError(f"pr_url {shown(pr_url)} is not an http(s) URL")
    if state == "failed" and pr_url is not None:
        raise WorkMessageError("a failed outcome has no pr_url")
    return _item_id(payload["item"]), state, reason, pr_url
