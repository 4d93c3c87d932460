"""What the dashboard shows: every agent's live state against what it must run, the latest
runs, and the orchestrator's work items. Built from ``fleet status``'s probes (SSH and
``/health`` in parallel), each gateway's public ``/metrics`` (bus outbox depth, dead
letters), the run records, and the orchestrator's work API (:mod:`fleet.control.work`,
signed with the operator's key)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from bus.timestamps import utc_timestamp
from fleet.control.expected import expected, judge
from fleet.control.records import RunRecord, went_through
from fleet.control.status import AgentStatus, probe_fleet, region_sorted
from fleet.core.bounded_http import AnswerError, get
from fleet.core.errors import FleetError
from fleet.core.registry import Agent, Registry, load_registry
from fleet.dashboard.charts import BusHistory, RunChart, Traffic, run_chart
from fleet.node.work.items import STATES as WORK_STATES

RUNS_SHOWN = 10
WORK_SHOWN = 20
METRICS_TIMEOUT_S = 2.0
IDLE_REFRESHES = 6
"""Refresh intervals without a request after which the dashboard stops probing the fleet
(at least :data:`MIN_IDLE_S` seconds)."""
MIN_IDLE_S = 30.0


@dataclass(frozen=True)
class AgentView:
    """One agent's row: live state, and how it compares with what it must run."""

    name: str
    role: str
    region: str | None
    host: str
    state: str  # ``ok``, ``drift`` or ``down``
    health: str
    release: str | None
    release_state: str  # ``ok``, ``drift`` or ``unknown`` (against the last deploy)
    soul_state: str
    config_state: str
    outbox_depth: int | None
    dead_letters: int | None
    last_seen: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostRun:
    """One host's part of a run."""

    name: str
    status: str
    release: str | None
    changed: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RunView:
    """One run record, as the dashboard lists it."""

    run_id: str
    kind: str
    status: str
    dry: bool
    release: str | None
    started: str | None
    finished: str | None
    hosts: tuple[HostRun, ...]
    summary: str = ""
    has_log: bool = False  # the receiver keeps a masked log of its runs


@dataclass(frozen=True)
class CheckView:
    """One scheduled drift check of the receiver."""

    check_id: int
    status: str
    started: str | None
    drifted: tuple[str, ...]
    summary: str
    alert: str


@dataclass(frozen=True)
class WorkRow:
    """One work item as the Work section lists it (links only to http(s) URLs)."""

    item_id: str
    state: str
    issue: str  # ``acme/shop#7 (gitea)``
    issue_url: str | None
    title: str
    assignee: str | None
    pr_url: str | None
    reason: str | None
    updated: str


@dataclass(frozen=True)
class WorkBoard:
    """The orchestrator's work items: how many each state holds, and the newest ones."""

    counts: dict[str, int]
    items: tuple[WorkRow, ...] = ()
    problem: str | None = None  # why the orchestrator's work API could not be read


@dataclass(frozen=True)
class Snapshot:
    """Everything one page (or one refresh of it) shows."""

    taken: str
    fleet: str
    agents: tuple[AgentView, ...]
    runs: tuple[RunView, ...]
    deployed_release: str | None
    problem: str | None = None  # why the fleet could not be probed at all (with the fix)
    checks: tuple[CheckView, ...] | None = None  # None: no scheduled drift checks here
    run_chart: RunChart | None = None  # the latest runs' durations and outcomes
    traffic: tuple[Traffic, ...] = ()  # each agent's bus traffic over the last hour
    work: WorkBoard | None = None  # None: no Work section here (no operator's key given)

    @property
    def counts(self) -> dict[str, int]:
        """How many agents are ``ok``, ``drift`` and ``down``."""
        found = {"ok": 0, "drift": 0, "down": 0}
        for agent in self.agents:
            found[agent.state] += 1
        return found


def read_runs(records: Path, limit: int = RUNS_SHOWN) -> list[RunRecord]:
    """The newest run records, newest first (unreadable files, and JSON that is not an
    object, are passed over)."""
    found: list[RunRecord] = []
    for path in sorted(records.glob("*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        found.append(cast(RunRecord, data))
        if len(found) == limit:
            break
    return found


def deployed_release(runs: list[RunRecord]) -> str | None:
    """The release of the newest deploy that went through (not a dry run)."""
    return next((run.get("release") for run in runs if went_through(run)), None)


def bus_gauges(agent: Agent) -> dict[str, int]:
    """The gateway's bus gauges from its public Prometheus ``/metrics``, read within bounds
    (:mod:`fleet.core.bounded_http`); empty (unknown) when it cannot be read, or is not 200."""
    url = re.sub(r"/health$", "/metrics", agent.health_endpoint)
    try:
        answer = get(url, METRICS_TIMEOUT_S)
    except AnswerError:
        return {}
    if answer.status != 200:
        return {}
    return {name: value for name, value in answer.samples().items()
            if name.startswith("fleet_bus_")}


def view_runs(runs: list[RunRecord]) -> tuple[RunView, ...]:
    """The records as rows: per host its outcome, release, changed operations and reason."""
    return tuple(RunView(
        run_id=run.get("run_id", "?"), kind=run.get("kind", "deploy"),
        status=run.get("status", "?"), dry=bool(run.get("dry")), release=run.get("release"),
        started=run.get("started"), finished=run.get("finished"),
        hosts=tuple(HostRun(name=name, status=entry.get("status", "?"),
                            release=entry.get("release"),
                            changed=tuple(entry.get("changed", entry.get("planned", []))),
                            reason=entry.get("reason", "") or "; ".join(entry.get("problems", [])))
                    for name, entry in run.get("hosts", {}).items()),
    ) for run in runs)


def link(url: object) -> str | None:
    """``url`` when it is an http(s) URL fit for a link, else None (a node's word is never
    a ``javascript:`` link)."""
    return url if isinstance(url, str) and re.fullmatch(r"https?://[^\s\x00-\x1f\x7f]+",
                                                        url) else None


def work_board(registry: Registry, newest: int = WORK_SHOWN) -> WorkBoard:
    """The orchestrator's work items from its work API; the reason (with the fix) when it
    cannot be read."""
    from fleet.control.work import list_items

    try:
        page = list_items(registry, limit=newest)
    except FleetError as exc:
        return WorkBoard(counts=dict.fromkeys(WORK_STATES, 0),
                         problem=f"{exc}" + (f" ({exc.hint})" if exc.hint else ""))
    return WorkBoard(
        counts={state: int(page["counts"].get(state, 0)) for state in WORK_STATES},
        items=tuple(WorkRow(
            item_id=item["id"], state=item["state"],
            issue=f"{item['repo']}#{item['issue']} ({item['forge']})",
            issue_url=link(item["issue_url"]), title=item["title"],
            assignee=item["assignee"], pr_url=link(item["pr_url"]), reason=item["reason"],
            updated=item["updated"]) for item in page["items"]))


WorkSource = Callable[[Registry], WorkBoard]
RunSource = Callable[[], list[RunView]]
CheckSource = Callable[[], list[CheckView]]
LogSource = Callable[[str], str | None]
RecordSource = Callable[[str], Path | None]


class Dashboard:
    """The dashboard's data source, one per app. The first request probes the fleet itself
    (the first fill); from then on a refresher thread of the dashboard's own probes it again
    half a refresh interval after each probe for as long as someone asks (until ``idle_s``
    passes without a request), and every request is answered at once from the newest probe:
    many viewers cost one probe of the fleet per half interval, and none waits on one. Runs
    come from the run records
    in ``records_dir`` unless ``runs`` gives them (the receiver's own runs, with logs);
    ``checks`` and ``logs`` are the receiver's drift checks and run logs; ``records`` finds
    the run record of one of those runs (by the same run id as ``logs``); ``work`` reads the
    orchestrator's work items (e.g. :func:`work_board`; None: no Work section)."""

    def __init__(self, registry_path: Path, records_dir: Path, refresh_s: float = 5.0,
                 runs: RunSource | None = None, checks: CheckSource | None = None,
                 logs: LogSource | None = None, records: RecordSource | None = None,
                 work: WorkSource | None = None, idle_s: float | None = None) -> None:
        self.registry_path = registry_path
        self.records_dir = records_dir
        self.refresh_s = refresh_s
        self.idle_s = max(IDLE_REFRESHES * refresh_s, MIN_IDLE_S) if idle_s is None else idle_s
        self.runs, self.checks, self.logs, self.records = runs, checks, logs, records
        self.work = work
        self._lock = threading.Lock()  # the cache, the last request, the refresher
        self._taking = threading.Lock()  # one probe of the fleet at a time
        self._cached: tuple[float, Snapshot] | None = None  # (monotonic time taken, snapshot)
        self._wanted = 0.0  # when a request last asked (monotonic)
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_seen: dict[str, str] = {}
        self._agents: dict[str, Agent] = {}
        self.history = BusHistory(self._gauges, every_s=max(refresh_s, 5.0))

    def _gauges(self, name: str) -> dict[str, int]:
        """One agent's bus gauges, for the history's sampler."""
        agent = self._agents.get(name)
        return bus_gauges(agent) if agent is not None else {}

    def snapshot(self) -> Snapshot:
        """The fleet as last probed: at once while the refresher keeps it fresh (or it is
        less than half a refresh interval old); otherwise probed now (the first fill, or the
        first request after the dashboard went unwatched)."""
        with self._lock:
            self._wanted = time.monotonic()
            if self._cached and (self.refreshing or self._fresh(self._cached[0])):
                self._start_refresher()
                return self._cached[1]
        with self._taking:
            with self._lock:  # another request may have filled it while this one waited
                cached = self._cached
            if cached is None or not self._fresh(cached[0]):
                cached = self._store(self._take())
        with self._lock:
            self._start_refresher()
        return cached[1]

    def stop(self) -> None:
        """End the refresher and the bus history's sampler (tests)."""
        self._stop.set()
        self.history.stop()

    def _fresh(self, taken: float) -> bool:
        return time.monotonic() - taken < self.refresh_s / 2

    @property
    def refreshing(self) -> bool:
        """Whether the refresher keeps the snapshot fresh now."""
        return self._refresher is not None and self._refresher.is_alive()

    def _store(self, snapshot: Snapshot) -> tuple[float, Snapshot]:
        cached = (time.monotonic(), snapshot)
        with self._lock:
            self._cached = cached
        return cached

    def _start_refresher(self) -> None:
        """Start the refresher unless it runs (called with ``_lock`` held)."""
        if not self.refreshing and not self._stop.is_set():
            self._refresher = threading.Thread(target=self._refresh, daemon=True,
                                               name="dashboard-refresh")
            self._refresher.start()

    def _refresh(self) -> None:
        """Probe the fleet half a refresh interval after each probe while requests come. A
        probe that fails ends the refresher: the next request then probes itself once its
        snapshot is stale, and the failure reaches that request (as without a refresher)."""
        while not self._stop.is_set():
            with self._lock:
                if time.monotonic() - self._wanted > self.idle_s:
                    self._refresher = None  # unwatched: the next request fills it again
                    return
                due = (self._cached[0] + self.refresh_s / 2 - time.monotonic()
                       if self._cached else 0.0)
            if due > 0 and self._stop.wait(due):
                return
            with self._taking:
                try:
                    snapshot = self._take()
                except Exception:  # reported by the request that probes next
                    with self._lock:
                        self._refresher = None
                    return
            self._store(snapshot)

    def _take(self) -> Snapshot:
        try:
            registry = load_registry(self.registry_path)
        except FleetError as exc:  # no registry yet (a receiver before its first run)
            return Snapshot(taken=utc_timestamp(), fleet="?", agents=(),
                            runs=tuple(self.runs() if self.runs else ()), deployed_release=None,
                            problem=f"{exc}", checks=tuple(self.checks()) if self.checks
                            else None)
        runs = read_runs(self.records_dir)
        release = deployed_release(runs)
        views = self.runs() if self.runs else list(view_runs(runs))
        agents = region_sorted(registry)  # the order probe_fleet answers in
        self._agents = {agent.name: agent for agent in agents}
        with ThreadPoolExecutor(max_workers=max(1, len(agents))) as pool:
            gauges = list(pool.map(bus_gauges, agents))
        for agent, gauge in zip(agents, gauges, strict=True):
            self.history.record(agent.name, gauge)
        self.history.watch(self._agents)
        problem = None
        try:
            statuses = probe_fleet(registry)
        except FleetError as exc:  # e.g. no pinned host keys: nothing is probed over SSH
            problem = f"{exc}" + (f" ({exc.hint})" if exc.hint else "")
            statuses = [AgentStatus(agent=agent.name, role=agent.role, host=agent.host,
                                    region=agent.region, ssh="not checked",
                                    health="not checked") for agent in agents]
        taken = utc_timestamp()
        agent_views = tuple(self._view(registry, agent, status, gauge, release, taken)
                            for agent, status, gauge in zip(agents, statuses, gauges,
                                                            strict=True))
        return Snapshot(taken=taken, fleet=registry.name, agents=agent_views, runs=tuple(views),
                        deployed_release=release, problem=problem,
                        checks=tuple(self.checks()) if self.checks else None,
                        run_chart=run_chart([(view.run_id, view.status, view.started,
                                              view.finished) for view in views]),
                        traffic=self.history.charts(),
                        work=self.work(registry) if self.work else None)

    def _view(self, registry: Registry, agent: Agent, status: AgentStatus,
              gauge: dict[str, int], release: str | None, taken: str) -> AgentView:
        verdict = judge(status, expected(registry, agent), release)
        if status.healthy:
            self.last_seen[agent.name] = taken
        reasons = [f"ssh: {status.ssh}"] if status.ssh != "ok" else []
        return AgentView(
            name=agent.name, role=agent.role, region=agent.region, host=agent.host,
            state=verdict.state, health=status.health, release=status.release,
            release_state=verdict.release, soul_state=verdict.soul, config_state=verdict.config,
            outbox_depth=gauge.get("fleet_bus_outbox_depth"),
            dead_letters=gauge.get("fleet_bus_dead_letters"),
            last_seen=self.last_seen.get(agent.name),
            problems=tuple(reasons + list(verdict.drift) + list(status.problems)))


def as_json(snapshot: Snapshot) -> dict[str, Any]:
    """The snapshot as plain data (``/dashboard/state.json``)."""
    return {**asdict(snapshot), "counts": snapshot.counts}

