"""The agent's schedules, in the services phase: per schedule of the registry
(``wizards.NAME.schedules``) a hardened oneshot service that posts the schedule's prompt as a
signed request into the agent's own inbox (:mod:`fleet.node.schedule`) and a timer that starts
it on the schedule's calendar; units of schedules the registry no longer has are stopped,
disabled and removed. The orchestrator of a registry with a ``work:`` section has one more,
``work-intake``, running work intake (:mod:`fleet.node.work.intake`) every 10 minutes
(:attr:`AgentContext.schedules`); it goes with the section.

The units are rendered by :mod:`fleet.control.render` (the prompt as one quoted
``Environment=`` word, the calendar expression as checked by :mod:`fleet.core.schedules`).
They are not part of what the agent loads: changing a schedule restarts no agent. The timers
are restarted only when their own file changed (``did_change``), and a no-change deploy plans
nothing here but the check of the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from pyinfra.operations import files, systemd

from deploys.context import CURRENT, UNIT_DIR, AgentContext
from deploys.ops import Outcome, managed_file, timers_running
from fleet.control import render
from fleet.control.templates import read_template
from fleet.core.schedules import Schedule
from fleet.core.work_config import INTAKE_SCHEDULE

SERVICE_TEMPLATE = "fleet-schedule.service.j2"
TIMER_TEMPLATE = "fleet-schedule.timer.j2"
MEMORY_MAX = "256M"  # one Python process sending one request
TASKS_MAX = 32
TIMEOUT_S = 120  # the send retries while the gateway restarts (fleet.node.schedule)
TIMERS = "Schedule timers enabled and running (restarted when their file changed)"
INTAKE_MODULE = "fleet.node.work.intake"
INTAKE_TIMEOUT_S = 900  # forges paged, each worker given ANSWER_TIMEOUT_S to answer
REMOVED_RELOAD = "systemd daemon-reload (schedule units removed)"


def service_text(ctx: AgentContext, schedule: Schedule) -> str:
    """The oneshot service of ``schedule``: the agent's user, environment file and sandbox;
    the schedule's name, prompt and capability as its environment (work-intake: the work
    intake, writing the work store in the state dir, reaching the forges and workers)."""
    if schedule.name == INTAKE_SCHEDULE and schedule not in ctx.agent.schedules:
        return render.unit_file(
            read_template(SERVICE_TEMPLATE), agent=ctx.name, schedule=schedule.name,
            user_name=ctx.user, etc_dir=ctx.etc_dir, state_dir=ctx.state_dir,
            current=CURRENT, gateway_unit=ctx.unit, timeout_s=INTAKE_TIMEOUT_S,
            memory_max=MEMORY_MAX, tasks_max=TASKS_MAX, extra_env=[], module=INTAKE_MODULE)
    env = [("FLEET_SCHEDULE", schedule.name), ("FLEET_SCHEDULE_PROMPT", schedule.prompt),
           ("FLEET_GATEWAY_URL", f"http://127.0.0.1:{ctx.agent.gateway_port}")]
    if schedule.capability:
        env.insert(2, ("FLEET_SCHEDULE_CAPABILITY", schedule.capability))
    return render.unit_file(
        read_template(SERVICE_TEMPLATE), agent=ctx.name, schedule=schedule.name,
        user_name=ctx.user, etc_dir=ctx.etc_dir, state_dir=ctx.state_dir, current=CURRENT,
        gateway_unit=ctx.unit, timeout_s=TIMEOUT_S, memory_max=MEMORY_MAX, tasks_max=TASKS_MAX,
        extra_env=[render.unit_env(name, value) for name, value in env])


def timer_text(ctx: AgentContext, schedule: Schedule) -> str:
    """The timer of ``schedule``: ``OnCalendar=`` its calendar expression."""
    return render.unit_file(
        read_template(TIMER_TEMPLATE), agent=ctx.name, schedule=schedule.name,
        on=render.unit_calendar(schedule.on,
                                what=f"wizards.{ctx.name}.schedules.{schedule.name}.on"),
        service_unit=ctx.schedule_units(schedule)[1])


def unit_files(ctx: AgentContext) -> tuple[list[Outcome], list[tuple[str, Outcome]]]:
    """Each schedule's service and timer file: the file operations (a change needs a
    daemon-reload), and the timers' unit names with their file operation."""
    written: list[Outcome] = []
    timers: list[tuple[str, Outcome]] = []
    for schedule in ctx.schedules:
        timer, service = ctx.schedule_units(schedule)
        for unit, text in ((service, service_text(ctx, schedule)),
                           (timer, timer_text(ctx, schedule))):
            name = f"Schedule unit {unit}"
            op = ctx.plan(managed_file, name, dest=f"{UNIT_DIR}/{unit}", content=text, user="root",
                          group="root", mode="644", node=ctx.node, diffs=ctx.diffs())
            written.append(op)
            if unit == timer:
                timers.append((unit, op))
    return written, timers


def timers_started(ctx: AgentContext, timers: Sequence[tuple[str, Outcome]]) -> None:
    """The timers enabled and running (after the daemon-reload of changed files)."""
    if timers:
        ctx.plan(timers_running, TIMERS, timers=timers, node=ctx.node)


def removed(ctx: AgentContext) -> None:
    """Units of schedules the registry no longer has (listed in the node's snapshot): timers
    stopped and disabled, services stopped, files deleted, then one daemon-reload. Planned
    only when there are such files."""
    wanted = {f"{UNIT_DIR}/{unit}" for item in ctx.schedules
              for unit in ctx.schedule_units(item)}
    stale = sorted(set(ctx.node["schedules"]["files"]) - wanted)
    if not stale:
        return
    deleted = []
    for path in stale:
        unit = PurePosixPath(path).name
        stopped = "stopped and disabled" if unit.endswith(".timer") else "stopped"
        ctx.plan(systemd.service, f"Removed schedule {unit} {stopped}", service=unit, running=False,
                 enabled=False if unit.endswith(".timer") else None)
    for path in stale:
        unit = PurePosixPath(path).name
        deleted.append(ctx.plan(files.file, f"Removed schedule unit {unit}", path=path,
                                present=False))
    ctx.plan(systemd.daemon_reload, REMOVED_RELOAD,
             _if=lambda: any(op.did_change() for op in deleted))
