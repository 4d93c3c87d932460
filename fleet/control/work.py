"""The orchestrator's work items from the controller (``fleet work list|show|retry|cancel``,
the dashboard's Work section): calls of its gateway's work API
(:mod:`fleet.node.gateway.work`), signed with the operator's key, the only one it takes.

Ids and states are checked here before anything is sent. What the node says back (its
refusals too) reaches the caller as :class:`WorkError` subclasses, its words escaped
(:func:`~fleet.core.registry.printable`): a node's text never moves the operator's
terminal.
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


def list_items(registry: Registry, state: str | None = None, limit: int = DEFAULT_LIMIT,
               after: str | None = None) -> Page:
    """A page of work items, newest first (``after``: the last id of the previous page)."""
    if state is not None and state not in STATES:
        raise WorkValueError(f"{shown(state)} is not a state: {', '.join(STATES)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise WorkValueError(f"limit {limit} is not 1 to {MAX_LIMIT}")
    page: Page = call(registry, "GET", "/work", {
        "state": state, "limit": limit, "after": None if after is None else checked_id(after)})
    return page


def show(registry: Registry, item_id: str) -> Shown:
    """One work item and its timeline."""
    found: Shown = call(registry, "GET", f"/work/{checked_id(item_id)}")
    return found


def retry(registry: Registry, item_id: str) -> WorkItem:
    """Queue a failed item again (:class:`WorkRefusedError` naming why otherwise)."""
    item: WorkItem = call(registry, "POST", f"/work/{checked_id(item_id)}/retry")["item"]
    return item


def cancel(registry: Registry, item_id: str) -> WorkItem:
    """Close a queued, working or failed item (:class:`WorkRefusedError` otherwise)."""
    item: WorkItem = call(registry, "POST", f"/work/{checked_id(item_id)}/cancel")["item"]
    return item
