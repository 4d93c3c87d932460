"""The orchestrator's work items from the controller (``fleet work list|show|retry|cancel``,
the dashboard's Work section): calls of its gateway's work API
(:mod:`fleet.node.gateway.work`), signed with the operator's key, the only one it takes.

Ids and states are checked here before anything is sent. What the node says back is checked
against the API's shapes before anyone reads it (:func:`checked_page`, :func:`checked_item`:
ids, states and numbers of their form, texts strings; anything else is
:class:`WorkUnreachableError`), and its refusals reach the caller as :class:`WorkError`
subclasses, its words escaped (:func:`~fleet.core.registry.printable`): a node's text never
moves the operator's terminal, and a malformed answer never becomes a traceback.
"""

from __future__ import annotations

from typing import Any, TypedDict

from bus.client import BusClient, GatewayError
from bus.errors import BusError
from fleet.control.secrets import load_secrets
from fleet.core.errors import WorkError
from fleet.core.registry import Agent, Registry, printable
from fleet.node.work.items import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    STATES,
    WORK_ID_RE,
    WORK_ID_RULE,
    Event,
    Page,
    WorkItem,
    shown,
)

TIMEOUT_S = 10.0


class WorkValueError(WorkError):
    """A value given for the work API breaks its rule (nothing was sent)."""


class WorkNotFoundError(WorkError):
    """The orchestrator has no such work item (404)."""


class WorkRefusedError(WorkError):
    """The orchestrator refused the change (409: not legal from the item's state, or a
    replay)."""


class WorkUnreachableError(WorkError):
    """The orchestrator's work API could not be asked (no key, no orchestrator, not
    answering, another error)."""


class Shown(TypedDict):
    """One item and its timeline, oldest event first."""

    item: WorkItem
    timeline: list[Event]


def checked_id(value: str) -> str:
    """A work item id, else :class:`WorkValueError` naming the rule."""
    if WORK_ID_RE.fullmatch(value) is None:
        raise WorkValueError(f"{shown(value)} is not a work item id: {WORK_ID_RULE}",
                             hint="See `fleet work list`.")
    return value


def orchestrator(registry: Registry) -> Agent:
    """The agent whose gateway keeps the work items: the first orchestrator."""
    found = registry.by_role("orchestrator")
    if not found:
        raise WorkUnreachableError("the registry names no orchestrator, so no agent keeps "
                                   "work items", hint="Give one agent `role: orchestrator`.")
    return found[0]


def work_client(registry: Registry) -> BusClient:
    """A client of the orchestrator's gateway signed with the operator's key."""
    key = load_secrets(registry=registry).operator_key()
    if key is None:
        raise WorkUnreachableError("fleet work needs the operator's key, and $FLEET_SECRETS "
                                   "has none", hint="Add identities.operator to the secrets "
                                                    "file (`fleet keys` makes one).")
    return BusClient.for_agent(registry, orchestrator(registry).name, key, TIMEOUT_S)


def call(registry: Registry, method: str, path: str,
         params: dict[str, Any] | None = None) -> Any:
    """One signed call of the work API; its refusals as typed errors, escaped."""
    with work_client(registry) as gateway:
        try:
            return gateway.call(method, path, params)
        except GatewayError as exc:
            raise _as_work_error(exc) from None
        except BusError as exc:
            raise WorkUnreachableError(printable(str(exc)), hint=exc.hint) from None


def _as_work_error(exc: GatewayError) -> WorkError:
    kind: type[WorkError] = {404: WorkNotFoundError, 409: WorkRefusedError}.get(
        exc.status or 0, WorkUnreachableError)
    return kind(printable(str(exc)), hint=printable(exc.hint) if exc.hint else None)


ITEM_TEXTS = ("forge", "repo", "issue_url", "title", "branch", "created", "updated")
ITEM_OPTIONAL_TEXTS = ("capability", "assignee", "pr_url", "reason")
ITEM_NUMBERS = ("issue", "attempts", "version", "events_dropped")


def malformed(what: str) -> WorkUnreachableError:
    return WorkUnreachableError(
        f"the orchestrator's answer is not a work API answer: {what}",
        hint="Is the orchestrator on this release? `fleet status`, then `fleet deploy`.")


def _number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def checked_item(value: Any) -> WorkItem:
    """``value`` if it is a work item as the API answers it, else :func:`malformed`."""
    if not isinstance(value, dict):
        raise malformed("an item is not an object")
    if not isinstance(value.get("id"), str) or not WORK_ID_RE.fullmatch(value["id"]):
        raise malformed("an item's id is not a work item id")
    if value.get("state") not in STATES:
        raise malformed(f"item {value['id']}: its state is not one of {', '.join(STATES)}")
    for key in ITEM_TEXTS:
        if not isinstance(value.get(key), str):
            raise malformed(f"item {value['id']}: {key} is not a string")
    for key in ITEM_OPTIONAL_TEXTS:
        if value.get(key) is not None and not isinstance(value[key], str):
            raise malformed(f"item {value['id']}: {key} is not a string or null")
    for key in ITEM_NUMBERS:
        if not _number(value.get(key)):
            raise malformed(f"item {value['id']}: {key} is not a whole number")
    item: WorkItem = value  # type: ignore[assignment]
    return item


def checked_page(value: Any) -> Page:
    """``value`` if it is a page of the work list, else :func:`malformed`."""
    if not isinstance(value, dict) or not isinstance(value.get("items"), list):
        raise malformed("the list has no items")
    for item in value["items"]:
        checked_item(item)
    after = value.get("next")
    if after is not None and not (isinstance(after, str) and WORK_ID_RE.fullmatch(after)):
        raise malformed("next is not a work item id")
    counts = value.get("counts")
    if not isinstance(counts, dict) or not all(
            key in STATES and _number(number) for key, number in counts.items()):
        raise malformed("counts is not a number per state")
    page: Page = value  # type: ignore[assignment]
    return page


def checked_shown(value: Any) -> Shown:
    """``value`` if it is an item with its timeline, else :func:`malformed`."""
    if not isinstance(value, dict) or not isinstance(value.get("timeline"), list):
        raise malformed("the item has no timeline")
    checked_item(value.get("item"))
    for event in value["timeline"]:
        if not (isinstance(event, dict) and _number(event.get("seq"))
                and isinstance(event.get("at"), str) and isinstance(event.get("kind"), str)
                and isinstance(event.get("detail"), dict)):
            raise malformed("an event is not {seq, at, kind, detail}")
    shown_item: Shown = value  # type: ignore[assignment]
    return shown_item


def checked_change(value: Any) -> WorkItem:
    """The item a retry or cancel answered, else :func:`malformed`."""
    if not isinstance(value, dict):
        raise malformed("the answer is not an object")
    return checked_item(value.get("item"))


def list_items(registry: Registry, state: str | None = None, limit: int = DEFAULT_LIMIT,
               after: str | None = None) -> Page:
    """A page of work items, newest first (``after``: the last id of the previous page)."""
    if state is not None and state not in STATES:
        raise WorkValueError(f"{shown(state)} is not a state: {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise WorkValueError(f"limit {limit} is not 1 to {MAX_LIMIT}")
    return checked_page(call(registry, "GET", "/work", {
        "state": state, "limit": limit, "after": None if after is None else checked_id(after)}))


def show(registry: Registry, item_id: str) -> Shown:
    """One work item and its timeline."""
    return checked_shown(call(registry, "GET", f"/work/{checked_id(item_id)}"))


def retry(registry: Registry, item_id: str) -> WorkItem:
    """Queue a failed item again (:class:`WorkRefusedError` naming why otherwise)."""
    return checked_change(call(registry, "POST", f"/work/{checked_id(item_id)}/retry"))


def cancel(registry: Registry, item_id: str) -> WorkItem:
    """Close a queued, working or failed item (:class:`WorkRefusedError` otherwise)."""
    return checked_change(call(registry, "POST", f"/work/{checked_id(item_id)}/cancel"))
