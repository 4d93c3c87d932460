"""Work intake on the orchestrator: ``python3 -m fleet.node.work.intake`` (its timer runs it).

One run, in order:

1. records the workers' ``work.event`` and ``work.outcome`` messages waiting in the
   orchestrator's inbox into the work store (:mod:`fleet.node.work.items`), from the item's
   assignee only (anything else is refused, logged and acknowledged);
2. for each source of the registry's ``work:`` section, takes in its open labelled issues
   (one item per issue, idempotent by the issue's URL);
3. closes the items a person ended on the forge (the issue closed, the pull request merged or
   closed);
4. resumes the items whose worker said nothing for longer than ``max_minutes`` plus
   :data:`GRACE_S` (a worker killed midway: the item goes to a worker again, which finds the
   branch and the pull request already there);
5. routes each queued item to a healthy worker with the capability its labels need (one item
   per worker): ``working`` on that worker, then a signed ``work.item``; a worker answering
   ``busy`` or not at all gives the item back to the queue.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from bus.timestamps import parse_timestamp
from fleet.core.errors import USER_ERRORS, FleetError
from fleet.core.registry import Agent, Registry, load_registry, printable
from fleet.core.sandbox_policy import DEFAULT_PORTS
from fleet.core.work_config import DEFAULT_CAPABILITY, WorkConfig, WorkSource
from fleet.node.runtime.ask import candidates, thinks
from fleet.node.work import items
from fleet.node.work.forges import open_forge
from fleet.node.work.forges.base import Forge, ForgeError, Issue
from fleet.node.work.messages import (
    EVENT,
    ITEM,
    MAX_BODY,
    OUTCOME,
    ItemOrder,
    WorkMessageError,
    read_event,
    read_outcome,
)

GRACE_S = 300.0
"""How long past ``max_minutes`` an item's worker may be silent before the item resumes."""
ANSWER_TIMEOUT_S = 30.0
"""How long a worker has to answer a ``work.item`` (accepted, busy or refused)."""
MAX_MESSAGES = 2000
"""The most inbox messages one run reads (the rest wait for the next run)."""
PULL_NUMBER_RE = re.compile(r"/(?:pulls|pull|merge_requests)/([0-9]{1,12})")

log = logging.getLogger("fleet.node.work.intake")


def same_site(url: str, git_url: str) -> bool:
    """Whether an issue's web page ``url`` is on the forge's own site: the host and port its
    repositories are cloned from (``git_url``)."""
    try:
        page, git = urlsplit(url), urlsplit(git_url)
        return (page.hostname, page.port or DEFAULT_PORTS.get(page.scheme)) == (
            git.hostname, git.port or DEFAULT_PORTS.get(git.scheme))
    except ValueError:
        return False


class IntakeError(FleetError):
    """Intake cannot run (no ``work:`` section, no orchestrator identity)."""


class Client(Protocol):
    """What intake needs of the orchestrator's signed bus client."""

    def messages(self, since: int = 0, limit: int = 100, wait: float = 0.0,
                 **filters: Any) -> dict[str, Any]: ...

    def ack(self, sender: str, message_id: str) -> bool: ...

    def send(self, to: str | None, type: str, payload: Any, retries: int = 3,
             **options: Any) -> dict[str, Any]: ...


@dataclass
class Report:
    """What one run did."""

    taken: int = 0
    routed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    recorded: int = 0
    refused: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Intake:
    """One orchestrator's intake: its registry, store, bus client and forge tokens."""

    registry: Registry
    agent: str
    state_dir: Path
    client: Client
    env: Mapping[str, str]
    healthy: Callable[[Agent], bool] = thinks
    forge_for: Callable[[WorkSource, str], Forge] = open_forge
    now: Callable[[], float] = time.time
    answer_timeout: float = ANSWER_TIMEOUT_S
    report: Report = field(default_factory=Report)

    @property
    def work(self) -> WorkConfig:
        if self.registry.work is None:
            raise IntakeError("the registry has no work: section",
                              hint="Add `work:` with its sources to the registry.")
        return self.registry.work

    def run(self) -> Report:
        """One intake run (the module's docstring); forge failures are reported per source,
        never raised, so one forge down stops no other."""
        work = self.work
        self.record_messages()
        for source in work.sources:
            try:
                self.take_source(source)
            except (ForgeError, items.WorkItemError) as exc:
                self.report.problems.append(f"{source.forge} {source.repo}: {exc}")
                log.warning("intake of %s %s: %s", source.forge, source.repo, exc)
        return self.report

    # --- 1. what the workers said -----------------------------------------------------------

    def record_messages(self) -> None:
        """Record the waiting ``work.event``/``work.outcome`` messages, oldest first, and
        acknowledge each (a refused one too: it is logged, never retried)."""
        since = 0
        for _ in range(MAX_MESSAGES // 100):
            page = self.client.messages(since=since, limit=100, unacked=1)
            for message in page["messages"]:
                since = max(since, int(message.get("seq") or 0))
                if message.get("type") not in (EVENT, OUTCOME):
                    continue
                why = self.record(message)
                if why:
                    self.report.refused.append(why)
                    log.warning("%s", why)
                else:
                    self.report.recorded += 1
                self.client.ack(message["from"], message["id"])
            if not page["messages"] or len(page["messages"]) < 100:
                return

    def record(self, message: dict[str, Any]) -> str:
        """Record one worker message; why it was refused ("" when recorded)."""
        sender = str(message.get("from"))
        try:
            if message["type"] == EVENT:
                item_id, kind, detail = read_event(message["payload"])
            else:
                item_id, state, reason, pr_url = read_outcome(message["payload"])
            item = items.get(self.state_dir, item_id)
        except (WorkMessageError, items.WorkItemError) as exc:
            return f"{message['type']} from {sender} refused: {exc}"
        if item["state"] != "working" or item["assignee"] != sender:
            return (f"{message['type']} from {sender} refused: {item_id} is {item['state']}"
                    f" on {item['assignee'] or 'no worker'}, not on {sender}")
        sent = parse_timestamp(str(message.get("timestamp")))
        at = min(self.now(), sent.timestamp()) if sent is not None else self.now()
        try:
            if message["type"] == EVENT:
                if kind not in ("proposed", "failed"):  # the outcome records those
                    items.record(self.state_dir, item_id, kind, detail, now=at)
            elif state == "proposed" and pr_url is not None:
                items.propose(self.state_dir, item_id, pr_url, version=item["version"], now=at)
            else:
                items.fail(self.state_dir, item_id, reason, version=item["version"], now=at)
        except items.WorkItemError as exc:
            return f"{message['type']} from {sender} refused: {exc}"
        return ""

    # --- 2.-5. one source -------------------------------------------------------------------

    def take_source(self, source: WorkSource) -> None:
        forge = self.forge_for(source, self.env.get(source.token, ""))
        issues: dict[str, Issue] = {}
        for issue in forge.labelled_issues(source.label):
            if not same_site(issue.url, source.git_url):
                why = (f"{source.forge} {source.repo}: issue {issue.number}'s page "
                       f"{printable(issue.url[:200])} is not on the forge's own site "
                       f"({printable(source.git_url)}): not taken")
                log.warning("%s", why)
                self.report.refused.append(why)
                continue
            title = printable(issue.title)[:items.MAX_TITLE].strip() or f"#{issue.number}"
            items.create(self.state_dir, source.forge, source.repo, issue.number, issue.url,
                         title, capability=source.capability_for(issue.labels)
                         or DEFAULT_CAPABILITY, now=self.now(), api_url=source.api_url)
            issues[issue.url] = issue
            self.report.taken += 1
        mine = [item for item in self.stored() if (item["forge"], item["repo"])
                == (source.forge, source.repo)]
        for item in mine:
            self.close_if_ended(forge, item, item["issue_url"] in issues)
        for item in mine:
            self.resume_if_silent(item)
        base = ""
        for item in self.stored(state="queued"):
            listed = issues.get(item["issue_url"])
            if (item["forge"], item["repo"]) != (source.forge, source.repo) or listed is None:
                continue
            base = base or forge.default_branch()
            self.route(item, listed, source, base)

    def stored(self, state: str | None = None) -> list[items.WorkItem]:
        """Every item (in ``state``), oldest first."""
        found: list[items.WorkItem] = []
        after = None
        while True:
            page = items.listing(self.state_dir, state, limit=items.MAX_LIMIT, after=after)
            found.extend(page["items"])
            after = page["next"]
            if after is None:
                return found[::-1]

    def close_if_ended(self, forge: Forge, item: items.WorkItem, listed: bool) -> None:
        """Close an item whose issue a person closed or whose pull request was merged or
        closed."""
        reason = ""
        if item["state"] == "proposed" and item["pr_url"]:
            number = PULL_NUMBER_RE.search(item["pr_url"])
            state = forge.pull_request_state(int(number.group(1))) if number else "open"
            if state != "open":
                reason = f"its pull request was {state} on the forge"
        if not reason and item["state"] in ("queued", "proposed", "failed") and not listed \
                and forge.issue_state(item["issue"]) == "closed":
            reason = "its issue was closed on the forge"
        if reason:
            items.close(self.state_dir, item["id"], reason, version=item["version"],
                        now=self.now())
            self.report.closed.append(item["id"])

    def resume_if_silent(self, item: items.WorkItem) -> None:
        """Give an item back to the queue when its worker said nothing for too long."""
        if item["state"] != "working":
            return
        events = items.timeline(self.state_dir, item["id"])
        stamps = [parsed.timestamp() for event in events
                  if (parsed := parse_timestamp(event["at"])) is not None]
        silent = self.now() - max(stamps, default=0.0)
        if silent > self.work.max_minutes * 60 + GRACE_S:
            items.resume(self.state_dir, item["id"], f"{item['assignee']} said nothing for "
                         f"{silent / 60:.0f} minutes", version=item["version"], now=self.now())
            self.report.resumed.append(item["id"])

    def route(self, item: items.WorkItem, issue: Issue, source: WorkSource, base: str) -> None:
        """Offer the item to healthy workers with its capability, one without an item first;
        the first to accept has it."""
        busy = {other["assignee"] for other in self.stored(state="working")}
        capability = item["capability"] or DEFAULT_CAPABILITY
        order = ItemOrder(item["id"], item["issue"], item["title"],
                          issue.body[:MAX_BODY], issue.url, source.forge,
                          source.repo, source.git_url, base)
        for agent in candidates(self.registry, capability, (self.agent, *filter(None, busy)),
                                self.healthy):
            started = items.start(self.state_dir, item["id"], agent.name, now=self.now())
            answer = self.offer(agent.name, order, started["attempts"])
            if "accepted" in answer:
                self.report.routed.append(item["id"])
                return
            items.resume(self.state_dir, item["id"], f"{agent.name} answered "
                         f"{json.dumps(answer)[:200]}", now=self.now())

    def offer(self, worker: str, order: ItemOrder, attempt: int) -> dict[str, Any]:
        """Send ``order`` to ``worker``; its answer (``{"silent": ...}`` when none came in
        time)."""
        message_id = f"work-{order.item}-{attempt}"
        self.client.send(worker, ITEM, order.payload(), id=message_id,
                         correlation_id=message_id, ttl=max(1, round(self.answer_timeout)))
        deadline = time.monotonic() + self.answer_timeout
        while (left := deadline - time.monotonic()) > 0:
            found = self.client.messages(type="response", correlation_id=message_id,
                                         limit=1, wait=min(left, 20.0))
            if found["messages"]:
                message = found["messages"][0]
                self.client.ack(message["from"], message["id"])
                payload = message["payload"]
                return payload if isinstance(payload, dict) else {"answer": payload}
        return {"silent": f"no answer within {self.answer_timeout:g} s"}


def main(env: Mapping[str, str] = os.environ) -> int:
    """One intake run as the orchestrator the environment names; prints what it did."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        registry = load_registry(env.get("FLEET_REGISTRY", "registry.yaml"))
        agent = registry.get(env.get("FLEET_AGENT", ""))
        if agent.role != "orchestrator":
            raise IntakeError(f"{agent.name} is not the orchestrator: intake runs there only")
        state_dir = Path(env.get("FLEET_STATE_DIR") or f"/var/lib/fleet/{agent.name}")
        with BusClient.for_agent(registry, agent.name, {agent.name: env.get(
                PRIVATE_KEY_ENV, "")}, timeout=30.0) as client:
            report = Intake(registry, agent.name, state_dir, client, env).run()
    except (*USER_ERRORS, IntakeError) as exc:
        print(f"fleet work intake: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.__dict__, sort_keys=True))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
