"""The rollout behind ``fleet deploy``, ``fleet rollback`` and the webhook: canary, then the
workers (all at once or in batches), stopping past ``max_failures``. In a fleet with regions
listing ``fleet.regions`` the workers go region by region, each region in its own batches and
gated on the regions before it; a region whose hosts all fail preflight (SSH included) is
reported unreachable and skipped, and the run ends ``partial``.

Built on pyinfra's CLI only: each stage is one ``pyinfra -y inventory.py deploy.py --limit
HOST ...`` process (each HOST as a pattern only it matches: :func:`limit_pattern`). Stage
N+1's process starts while stage N deploys, so it connects and plans
meanwhile; after preflight (and, with ``fleet.prestage`` or ``--prestage``, the release's
upload and unpacking: ``--data prestage=true``) its gate (``deploys/gate.py``) waits for the
controller's verdict on the earlier stages (a host with nothing to change does not wait: it is
only checked). The
controller judges a stage from the run record (:mod:`fleet.control.records`) as soon as all its
hosts are audited, or when its process ends (a host with no entry then failed).

Nothing polls. Each stage process tells the controller on its phase pipe when it wrote a
host's final outcome to the record ("recorded"); the controller blocks on one queue fed by
every running stage process (output lines, phases, "recorded" notes, ends) and reads the record
only when it starts following a stage, on a "recorded" note of that stage, and at its end.
Right after writing its verdict on stage N to the record, it writes a note to stage N+1's
verdict pipe, on which that stage's gate blocks (then reads the record); the pipe's end tells
the gate the controller is gone. The record stays the record: the pipes only say "look now".

Each stage's output is streamed, secrets masked, one stage after the other (a later stage's
lines wait until it is followed). The outcome is the typed run record; nothing is read from
console output. An observer is also told the rollout's typed events
(:mod:`fleet.control.rollout_events`): the stages, each host's phase as its stage's process
reports it, and each host's outcome as soon as the record has it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bus.timestamps import utc_timestamp
from fleet.control.hosts import check_known_hosts
from fleet.control.inventory import inventory_groups
from fleet.control.records import (
    RECORDS_ENV,
    RUN_ID_ENV,
    HostRecord,
    RecordWatch,
    RunRecord,
    StageRecord,
    Verdict,
    current_run_id,
    host_reason,
    load_record,
    records_dir,
    set_verdict,
    update_host,
    update_run,
)
from fleet.control.release import build_release, check_release_id, release_env
from fleet.control.rollout_events import (
    PHASE_FD_ENV,
    VERDICT_FD_ENV,
    HostDone,
    HostPhase,
    HostRecorded,
    Observer,
    RegionUnreachable,
    RolloutFinished,
    RolloutPlanned,
    RolloutStopped,
    StagePlan,
    StageStarted,
    read_notes,
    verdict_line,
)
from fleet.control.secrets import load_secrets
from fleet.core.errors import DeployError
from fleet.core.masking import Masker
from fleet.core.registry import NAME_RE, REGISTRY_ENV, Registry

Echo = Callable[[str], None]
FINAL = ("ok", "failed", "rolled_back", "skipped")
STOP_GRACE_S = 10.0  # a failing controller lets later stages skip at their gates this long
NO_ENTRY = ("no audit record: not reached over SSH (no connection, or its snapshot could "
            "not be read); see the pyinfra output of this stage")
NO_ENTRY_REACHED = ("no audit record: reached over SSH, then the deploy stopped before verify; "
                    "see the pyinfra output of this stage")


@dataclass(frozen=True)
class RolloutOptions:
    """What ``fleet deploy`` (or ``fleet rollback``) was asked to do."""

    dry: bool = False
    diff: bool = False
    limit: tuple[str, ...] = ()
    batch: int | None = None
    max_failures: int = 0
    action: Literal["deploy", "rollback"] = "deploy"
    rollback_to: str | None = None
    rollback_with_state: bool = False  # restore the state snapshot taken before the release
    regions: tuple[str, ...] = ()  # only the agents of these regions
    stop_on_unreachable_region: bool = False
    prestage: bool | None = None  # later stages get the release before their gate (None:
    # the registry's ``fleet.prestage``)


@dataclass
class RolloutResult:
    """The outcome of a rollout: its run record."""

    run_id: str
    record: RunRecord

    @property
    def status(self) -> str:
        return self.record.get("status", "failed")

    @property
    def hosts(self) -> dict[str, HostRecord]:
        return self.record.get("hosts", {})

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def project_dir() -> Path:
    """The fleet repository to deploy from: the working directory, which must hold
    ``inventory.py`` and ``deploy.py``."""
    here = Path.cwd()
    missing = [name for name in ("inventory.py", "deploy.py") if not (here / name).is_file()]
    if missing:
        raise DeployError(f"{here} has no {' or '.join(missing)}: not a fleet repository",
                          hint="Run the command from your fleet repository's top folder.")
    return here


def select(registry: Registry, limit: Sequence[str],
           regions: Sequence[str] = ()) -> list[str]:
    """Agent names matched by ``limit`` (agent or group names) and in ``regions`` (when given),
    in registry order."""
    known_regions = registry.region_order()
    for region in regions:
        if region not in known_regions:
            raise DeployError(f"--region {region!r} is not a region of the fleet (regions: "
                              f"{', '.join(known_regions) or 'none'})",
                              hint="Use a region of fleet.regions or of an agent's `region:`.")
    names = _select(registry, limit)
    return [name for name in names if not regions or registry.agents[name].region in regions]


def _select(registry: Registry, limit: Sequence[str]) -> list[str]:
    """Agent names matched by ``limit`` (agent or group names), in registry order."""
    if not limit:
        return list(registry.agents)
    groups = inventory_groups(registry)
    chosen: set[str] = set()
    for name in limit:
        if name in registry.agents:
            chosen.add(name)
        elif name in groups:
            chosen.update(entry[0] for entry in groups[name])
        else:
            known = ", ".join([*registry.agents, *groups])
            raise DeployError(f"--limit {name!r} matches no agent or group (known: {known})",
                              hint="Use an agent name, a role or a capability.")
    return [name for name in registry.agents if name in chosen]


def plan_waves(registry: Registry, names: Sequence[str],
               batch: int | None) -> list[tuple[str | None, list[str]]]:
    """Stages with their region: the canary (the orchestrators), then, when the fleet lists
    ``fleet.regions``, each region's workers in that order (in batches of the region's
    ``batch``, else ``batch``); otherwise all workers in batches of ``batch``."""
    canary = [name for name in names if registry.agents[name].role == "orchestrator"]
    workers = [name for name in names if name not in canary]
    canary_regions = {registry.agents[name].region for name in canary}
    waves: list[tuple[str | None, list[str]]] = []
    if canary:
        one = registry.regions and len(canary_regions) == 1
        waves.append((canary_regions.pop() if one else None, canary))
    order = registry.region_order() if registry.regions else []
    for region in [*order, None]:
        members = [name for name in workers
                   if (registry.agents[name].region if order else None) == region]
        size = (registry.region(region).batch if region else None) or batch or len(members)
        waves += [(region, members[i:i + size]) for i in range(0, len(members), size or 1)]
    return waves


def stage_label(registry: Registry, stages: list[list[str]], index: int) -> str:
    """``canary`` for a first stage of orchestrators, else ``workers``."""
    first = registry.agents[stages[index][0]]
    return "canary" if index == 0 and first.role == "orchestrator" else "workers"


def limit_pattern(name: str) -> str:
    """pyinfra's ``--limit`` for agent ``name`` and no other host: pyinfra reads a ``--limit``
    value as a group name first (``worker``, ``inventory``, a capability) and only then as a
    glob of host names, so an agent named like a group would have its stage deploy the group.
    ``[w]orker`` names no group (group names have no brackets) and, as a glob, only ``worker``
    (agent names are letters, digits and '-', literal in a glob)."""
    if not NAME_RE.fullmatch(name):
        raise DeployError(f"{name!r} is not an agent name", hint="Use an agent of the registry.")
    return f"[{name[0]}]{name[1:]}"


def pyinfra_command(hosts: Sequence[str], options: RolloutOptions, stage: int = 0,
                    prestage: bool = False) -> list[str]:
    """The pyinfra CLI call for one stage (``-y`` unless dry: a dry run shows the changes);
    ``prestage``: a later stage's hosts get the release before their gate
    (``deploys.release.prestage``)."""
    command = [sys.executable, "-m", "fleet.control.pyinfra_launcher",
               *([] if options.dry else ["-y"]),
               "inventory.py", "deploy.py"]
    for name in hosts:
        command += ["--limit", limit_pattern(name)]
    if stage:
        command += ["--data", f"rollout_stage={stage}",
                    "--data", f"rollout_controller={os.getpid()}"]
        if prestage and options.action == "deploy":
            command += ["--data", "prestage=true"]
    if options.action == "rollback":
        command += ["--data", "action=rollback"]
        if options.rollback_to:  # JSON-quoted: pyinfra would read "0123" as a number
            command += ["--data", f"rollback_to={json.dumps(options.rollback_to)}"]
        if options.rollback_with_state:
            command += ["--data", "rollback_with_state=true"]
    if options.dry:
        command.append("--dry")
    if options.diff:
        command.append("--diff")
    return command


def stage_env(registry: Registry, run_id: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment of the pyinfra processes: this registry, run id, records dir, release."""
    env = dict(os.environ)
    env.update({REGISTRY_ENV: str(registry.path.resolve()), RUN_ID_ENV: run_id,
                RECORDS_ENV: str(records_dir().resolve()), "PYINFRA_PROGRESS": "off", **extra})
    return env


Note = tuple[int, str | HostPhase | HostRecorded | None]
"""What a stage process sends the controller, with the stage's index: an output line (masked),
a host's phase, a "recorded" note, or None once its output and phases are read and it ended."""


class StageProcess:
    """One stage's pyinfra process. Two threads put what it sends on the rollout's one queue of
    :data:`Note`: its output lines (masked), then its end; and what it reports on its phase
    pipe (``$FLEET_PHASE_FD``): host phases and "recorded" notes. A later stage also gets the
    read end of a verdict pipe (``$FLEET_VERDICT_FD``): :meth:`tell_verdict` writes to it."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, masker: Masker,
                 index: int, notes: queue.Queue[Note], verdicts: bool = False) -> None:
        self.index = index
        self.notes = notes
        self.backlog: list[str] = []  # output lines read while another stage is followed
        self.started = utc_timestamp()
        phase_read, phase_write = os.pipe()
        verdict_read, self._verdict = os.pipe() if verdicts else (-1, -1)
        env = {**env, PHASE_FD_ENV: str(phase_write)}
        env.pop(VERDICT_FD_ENV, None)
        if verdicts:
            env[VERDICT_FD_ENV] = str(verdict_read)
        try:
            self.process = subprocess.Popen(  # a session of its own: a Ctrl-C at the
                command, cwd=cwd, env=env, text=True, errors="replace",  # terminal stops
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # the controller, which
                stderr=subprocess.STDOUT, start_new_session=True,  # stops the stages in
                pass_fds=(phase_write, *([verdict_read] if verdicts else [])))  # order
        except BaseException:
            os.close(phase_read)
            self.close_verdict()
            raise
        finally:
            os.close(phase_write)  # the child's copies stay open: the readers end with them
            if verdicts:
                os.close(verdict_read)
        self._phase_reader = threading.Thread(target=self._read_phases, args=(phase_read,),
                                              daemon=True)
        self._phase_reader.start()
        self._reader = threading.Thread(target=self._read, args=(masker,), daemon=True)
        self._reader.start()
        self.done = False  # all output and phases read, and the process ended

    def _read(self, masker: Masker) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.notes.put((self.index, masker(line.rstrip("\n"))))
        self.process.wait()
        self._phase_reader.join(timeout=5)  # its phases too (5 s if a child kept the pipe)
        self.notes.put((self.index, None))

    def _read_phases(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for note in read_notes(stream):
                self.notes.put((self.index, note))

    def tell_verdict(self, stage: int) -> None:
        """Tell this stage's gate that the verdict on ``stage`` is in the record (nothing when
        it has no verdict pipe, or it ended)."""
        if self._verdict >= 0:
            with contextlib.suppress(OSError):  # it ended: nothing waits any more
                os.write(self._verdict, verdict_line(stage))

    def close_verdict(self) -> None:
        """Close the verdict pipe's write end (its gate, if it still waits, sees the end)."""
        if self._verdict >= 0:
            os.close(self._verdict)
            self._verdict = -1

    def ended(self) -> None:
        """Its end came through the queue: every line and phase is read."""
        self.close_verdict()
        self.done = True

    def stop(self) -> None:
        """End the process (used only when the controller itself fails)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.close_verdict()


def final_outcome(run_id: str, hosts: Sequence[str], ended: bool,
                  watch: RecordWatch | None = None) -> dict[str, str] | None:
    """Status per host of a stage once every host has a final entry in the record, or once
    its process ended (hosts without one are recorded failed); None while still running.
    ``watch``: the record's watch, so a poll reads it only when it changed."""
    entries = (watch or RecordWatch(run_id)).read().get("hosts", {})
    outcome = {name: entries.get(name, {}).get("status", "") for name in hosts}
    if all(status in FINAL for status in outcome.values()):
        return outcome
    if not ended:
        return None
    for name, status in outcome.items():
        if status not in FINAL:
            reached = entries.get(name, {}).get("reached")
            update_host(run_id, name, {"status": "failed",
                                       "reason": NO_ENTRY_REACHED if reached else NO_ENTRY})
            outcome[name] = "failed"
    return outcome


def planned_outcome(run_id: str, hosts: Sequence[str], code: int) -> dict[str, str]:
    """Status per host of a dry run: ``planned``, or ``failed`` when the plan failed."""
    outcome: dict[str, str] = {}
    for name in hosts:
        entry: HostRecord = {"status": "planned" if code == 0 else "failed"}
        if code:
            entry["reason"] = f"the dry run exited with status {code}; see its output"
        update_host(run_id, name, entry)
        outcome[name] = entry["status"]
    return outcome


class Rollout:
    """One run of the rollout: its stages, their processes and verdicts."""

    def __init__(self, registry: Registry, options: RolloutOptions, echo: Echo,
                 observe: Observer | None = None) -> None:
        self.registry = registry
        self.options = options
        self.echo = echo
        self.observe: Observer = observe or (lambda event: None)
        self.told: dict[str, tuple[str, str]] = {}  # per host: the outcome last told
        self.root = project_dir()
        if options.rollback_to is not None:
            check_release_id(options.rollback_to)
        self.masker = Masker(load_secrets(registry=registry).values())
        self.prestage = registry.prestage if options.prestage is None else options.prestage
        self.names = select(registry, options.limit, options.regions)
        if self.names:  # first contact is explicit: every host key pinned before connecting
            check_known_hosts(registry, self.names)
        self.run_id = current_run_id()
        waves = ([(None, self.names)] if options.dry and self.names
                 else plan_waves(registry, self.names, options.batch))
        self.stages = [hosts for _, hosts in waves]
        self.regions = [region for region, _ in waves]
        self.processes: dict[int, StageProcess] = {}
        self.notes: queue.Queue[Note] = queue.Queue()  # from every running stage process
        self.watch = RecordWatch(self.run_id)
        self.failures: dict[str, int] = {}  # per failure group: a region, or "" (the rest)
        self.unreachable: list[str] = []  # regions found unreachable, in order
        self.stopped = False
        self.stopped_after = -1  # the stage after which the rollout stopped
        self.following = -1  # the stage whose process is followed now
        release = None if options.action == "rollback" else build_release(self.root)
        self.release = release.id if release else ""
        self.env = stage_env(registry, self.run_id, release_env(release) if release else {})

    def start(self, index: int) -> None:
        """Start stage ``index``'s pyinfra process (once, never after the rollout stopped)."""
        if (index < len(self.stages) and index not in self.processes and not self.stopped
                and self.regions[index] not in self.unreachable):
            command = pyinfra_command(self.stages[index], self.options,
                                      stage=0 if self.options.dry else index,
                                      prestage=self.prestage)
            self.processes[index] = StageProcess(
                command, self.env, self.root, self.masker, index, self.notes,
                verdicts=index > 0 and not self.options.dry)
            self.observe(StageStarted(index))

    def run(self) -> RunRecord:
        """Run every stage; returns the final run record."""
        options = self.options
        update_run(self.run_id, kind=options.action, status="running", release=self.release,
                   registry=str(self.registry.path), dry=options.dry, limit=list(options.limit),
                   batch=options.batch, max_failures=options.max_failures,
                   to=options.rollback_to, stages=[], skipped=[],
                   regions=[r for r in self.registry.region_order() if r in self.regions],
                   unreachable_regions=[])
        if not self.stages:
            update_run(self.run_id, status="ok", finished=utc_timestamp())
            return load_record(self.run_id)
        plan = "; then ".join(f"{self.where(index)}: {', '.join(hosts)}"
                              for index, hosts in enumerate(self.stages))
        what = f"release {self.release}" if self.release else "rollback"
        self.echo(f"==> {plan} ({what}, run {self.run_id})")
        self.observe(RolloutPlanned(
            run_id=self.run_id, kind=options.action, release=self.release, dry=options.dry,
            stages=tuple(StagePlan(self.label(index), self.regions[index], tuple(hosts))
                         for index, hosts in enumerate(self.stages))))
        try:
            self._stages()
        finally:
            self._stop_processes()
        status = ("failed" if self.stopped else "partial" if self.unreachable
                  else "degraded" if any(self.failures.values()) else "ok")
        update_run(self.run_id, status=status, finished=utc_timestamp(),
                   skipped=self.not_deployed())
        record = load_record(self.run_id)
        self._tell_outcomes(self.names, record)
        self.observe(RolloutFinished(status))
        return record

    def _stop_processes(self) -> None:
        """End every stage process still running (only when the controller itself fails).
        The stages not followed yet are told the controller is gone first (their verdict
        pipes close): their hosts waiting at the gate are skipped and release their deploy
        locks; any of them still running after :data:`STOP_GRACE_S` is killed too."""
        for process in self.processes.values():
            process.close_verdict()
        later = [process for index, process in sorted(self.processes.items())
                 if index > self.following]
        for process in self.processes.values():
            if process not in later:
                process.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            for process in later:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:  # a second interrupt while waiting: killed now
            for process in later:
                process.stop()

    def not_deployed(self) -> list[str]:
        """The hosts of a stopped rollout that were skipped (a host with nothing to change
        was checked, not skipped: see ``deploys/gate.py``)."""
        if not self.stopped:
            return []
        entries = load_record(self.run_id).get("hosts", {})
        return [name for stage in self.stages[self.stopped_after + 1:] for name in stage
                if entries.get(name, {}).get("status") == "skipped"]

    def label(self, index: int) -> str:
        return "plan" if self.options.dry else stage_label(self.registry, self.stages, index)

    def where(self, index: int) -> str:
        """The stage's label with its region (``us workers``)."""
        region = self.regions[index]
        return f"{region} {self.label(index)}" if region else self.label(index)

    def _stages(self) -> None:
        """Run the stages in order, each next one started while the one before deploys."""
        records: list[StageRecord] = []
        for index, hosts in enumerate(self.stages):
            self.start(index)
            if index not in self.processes:  # stopped, or its region is unreachable
                self._skip_unstarted(index, hosts)
                if not self.stopped:  # the next stage's gate waits for a verdict on this one
                    self._verdict(index, {"go": True, "failures": 0, "allowed": 0})
                records.append({"stage": self.label(index), "region": self.regions[index],
                                "hosts": hosts, "exit_code": None,
                                "outcome": dict.fromkeys(hosts, "skipped")})
            else:
                if not self.options.dry:
                    self.start(index + 1)
                records.append(self._follow(index, hosts))
            update_run(self.run_id, stages=records)

    def _follow(self, index: int, hosts: list[str]) -> StageRecord:
        """Stream stage ``index`` until its process ends; judge it as soon as it can be.

        Blocks on the rollout's one queue of notes (:class:`StageProcess`): lines of this stage
        are echoed, those of a later stage kept for when it is followed; phases of every stage
        go to the observer as they come. The record is read when following starts, on each
        "recorded" note of this stage and at its end, never on a timer."""
        process = self.processes[index]
        self.following = index
        for line in process.backlog:
            self.echo(line)
        process.backlog.clear()
        outcome = None if self.options.dry else self._look(index, hosts)
        while not process.done:
            which, note = self.notes.get()
            if self._take(index, which, note) and outcome is None and not self.options.dry:
                outcome = self._look(index, hosts)
        code = process.process.returncode
        if outcome is None:
            outcome = planned_outcome(self.run_id, hosts, code)
        self._tell_outcomes(hosts, load_record(self.run_id))
        return {"stage": self.label(index), "region": self.regions[index], "hosts": hosts,
                "exit_code": code, "outcome": outcome, "started": process.started,
                "finished": utc_timestamp()}

    def _take(self, index: int, which: int, note: str | HostPhase | HostRecorded | None) -> bool:
        """Handle one note of stage ``which`` while stage ``index`` is followed; True when the
        record may now hold more of stage ``index`` (a "recorded" note of it, or its end). A
        phase or "recorded" note naming a host of another stage is dropped."""
        process = self.processes[which]
        if note is None:
            process.ended()
            return which == index
        if isinstance(note, HostPhase | HostRecorded) and note.host not in self.stages[which]:
            return False  # a stage speaks for its own hosts only
        if isinstance(note, HostPhase):
            self.observe(note)
        elif isinstance(note, HostRecorded):
            return which == index
        elif which == index:
            self.echo(note)
        else:
            process.backlog.append(note)
        return False

    def _look(self, index: int, hosts: list[str]) -> dict[str, str] | None:
        """Read the record: tell the observer the outcomes of ``hosts`` it has now and, once
        the stage is final (:func:`final_outcome`), judge it; its outcome, or None."""
        process = self.processes[index]
        outcome = final_outcome(self.run_id, hosts, ended=process.done, watch=self.watch)
        self._tell_outcomes(hosts, self.watch.read())  # before the verdict
        if outcome is not None:
            self._judge(index, outcome)
        return outcome

    def _tell_outcomes(self, hosts: Sequence[str], record: RunRecord) -> None:
        """Tell the observer each of ``hosts`` whose final outcome in ``record`` is new."""
        entries = record.get("hosts", {})
        for name in hosts:
            entry = entries.get(name, {})
            status = entry.get("status", "")
            if status in (*FINAL, "planned"):
                told = (status, "" if status in ("ok", "planned") else host_reason(entry))
                if self.told.get(name) != told:
                    self.told[name] = told
                    self.observe(HostDone(name, *told))

    def _judge(self, index: int, outcome: dict[str, str]) -> None:
        """Count the stage's failures and write the verdict the next stage's gate waits for.

        A region's stage whose hosts all failed preflight (or never connected) makes the
        region unreachable: its hosts are recorded skipped, not counted as failures, and the
        later stages go on (unless ``stop_on_unreachable_region``)."""
        if self.stopped:  # started before the stop; its hosts waited at the gate and skipped
            return
        region = self.regions[index]
        if self.label(index) == "workers" and region and self._unreachable(index, outcome):
            self._mark_unreachable(index, region)
            outcome.update(dict.fromkeys(outcome, "skipped"))
            if self.options.stop_on_unreachable_region:
                self._stop(index, f"region {region} is unreachable", 0, 0)
                return
            self._verdict(index, {"go": True, "failures": 0, "allowed": 0})
            return
        group = region if region and self.label(index) == "workers" else ""
        allowed = self.options.max_failures
        own = self.registry.region(group).max_failures if group else None
        allowed = own if own is not None else allowed
        count = self.failures.get(group, 0) + sum(s != "ok" for s in outcome.values())
        self.failures[group] = count
        go = count <= allowed
        self._verdict(index, {"go": go, "failures": count, "allowed": allowed})
        if not go:
            self._stop(index, f"{count} host(s) failed (allowed: {allowed})", count, allowed)

    def _verdict(self, index: int, verdict: Verdict) -> None:
        """Write the verdict on stage ``index`` to the record, then tell the next stage's gate
        (when its process runs; one started later reads the record first)."""
        set_verdict(self.run_id, index, verdict)
        following = self.processes.get(index + 1)
        if following is not None:
            following.tell_verdict(index)

    def _stop(self, index: int, why: str, failures: int, allowed: int) -> None:
        """Stop the rollout after stage ``index``: no later stage deploys."""
        self.stopped, self.stopped_after = True, index
        verdict: Verdict = {"go": False, "failures": failures, "allowed": allowed}
        if not failures:
            verdict["reason"] = f"not deployed: {why} (--stop-on-unreachable-region)"
        self._verdict(index, verdict)
        if any(self.stages[index + 1:]):
            self.echo(f"==> stopped: {why}; the later stages change nothing")
            self.observe(RolloutStopped(why))

    def _unreachable(self, index: int, outcome: dict[str, str]) -> bool:
        """Whether every host of stage ``index`` failed preflight or never connected."""
        if self.regions[index] in self.unreachable:
            return True
        entries = load_record(self.run_id).get("hosts", {})
        return all(status == "failed" and (entries.get(name, {}).get("phase") == "preflight"
                                           or not entries.get(name, {}).get("reached"))
                   for name, status in outcome.items())

    def _mark_unreachable(self, index: int, region: str) -> None:
        """Record region ``region`` unreachable and stage ``index``'s hosts skipped."""
        for name in self.stages[index]:
            entry = load_record(self.run_id).get("hosts", {}).get(name, {})
            why = "; ".join(entry.get("problems", [])) or entry.get("reason", "")
            update_host(self.run_id, name, {
                "status": "skipped", "unreachable": True,
                "reason": f"region {region} is unreachable (preflight failed on all its "
                          f"hosts): {why}"})
        if region not in self.unreachable:
            self.unreachable.append(region)
            self.echo(f"==> region {region} is unreachable: skipped"
                      + ("" if self.options.stop_on_unreachable_region
                         else "; the other regions go on"))
            self.observe(RegionUnreachable(region))
            update_run(self.run_id, unreachable_regions=self.unreachable)

    def _skip_unstarted(self, index: int, hosts: list[str]) -> None:
        """Record the hosts of a stage that never started as skipped."""
        region = self.regions[index]
        reason = ("not deployed: an earlier rollout stage failed" if self.stopped
                  else f"not deployed: region {region} is unreachable")
        for name in hosts:
            update_host(self.run_id, name, {"status": "skipped", "reason": reason,
                                            **({} if self.stopped else {"unreachable": True})})
        self._tell_outcomes(hosts, load_record(self.run_id))


def deploy_fleet(registry: Registry, options: RolloutOptions, echo: Echo,
                 observe: Observer | None = None) -> RolloutResult:
    """Deploy (or roll back) the selected agents: canary first, then the workers; stop past
    ``max_failures``. ``echo`` gets the streamed text, ``observe`` (if given) the typed events
    (:mod:`fleet.control.rollout_events`). The run record is the outcome."""
    rollout = Rollout(registry, options, echo, observe)
    record = rollout.run()
    return RolloutResult(run_id=rollout.run_id, record=record)
