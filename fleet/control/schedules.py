"""An agent's schedules from the controller: run one now (``fleet work run-now``).

The node does the work: ``systemctl start`` of the schedule's oneshot service
(:mod:`deploys.schedules`), over SSH with the deploy's settings
(:func:`fleet.control.status.as_root`: the registry's key, host keys pinned, ``sudo -n`` when
the login user is not root). ``systemctl start`` of a oneshot returns once it has run, that
is once its request is queued in the agent's outbox.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from fleet.control.status import as_root
from fleet.core.errors import WorkError
from fleet.core.registry import Registry
from fleet.core.schedules import Schedule, unit_base
from fleet.core.work_config import INTAKE_SCHEDULE

SSH_TIMEOUT = 10.0
RUN_TIMEOUT = 180.0  # the unit's TimeoutStartSec (deploys.schedules.TIMEOUT_S), with room
INTAKE_RUN_TIMEOUT = 960.0  # work intake's (deploys.schedules.INTAKE_TIMEOUT_S), with room


@dataclass(frozen=True)
class Started:
    """A schedule run now: the agent, the schedule and the service that ran."""

    agent: str
    schedule: Schedule
    unit: str


def run_now(registry: Registry, agent_name: str, schedule_name: str) -> Started:
    """Start ``agent_name``'s schedule ``schedule_name`` on its node now; returns once its
    service has posted the request. :class:`~fleet.core.errors.RegistryError` for an unknown
    agent or schedule (nothing is run), :class:`WorkError` when the node does not run it."""
    agent = registry.get(agent_name)
    schedule = registry.schedule_of(agent, schedule_name)
    unit = f"{unit_base(agent.name, schedule.name)}.service"
    wait = INTAKE_RUN_TIMEOUT if schedule.name == INTAKE_SCHEDULE else RUN_TIMEOUT
    argv = as_root(agent, registry, ["systemctl", "start", unit], SSH_TIMEOUT)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=wait,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise WorkError(f"{agent.name}: {unit} did not finish within {wait:.0f} s",
                        hint=f"See `journalctl -u {unit}` on the node.") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()
        reason = said[0] if said else f"exit status {done.returncode}"
        hint = (f"Deploy the schedule first (`fleet deploy --limit {agent.name}`)."
                if "not found" in reason else
                f"See `journalctl -u {unit}` on the node, and `fleet status`.")
        raise WorkError(f"{agent.name}: systemctl start {unit} failed: {reason}", hint=hint)
    return Started(agent.name, schedule, unit)
