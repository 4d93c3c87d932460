"""Per-host phases for the rollout's live view (:mod:`fleet.control.rollout_events`): preflight
says ``preflight`` as its checks run (with the plan), the rollout gate ``waiting``, and a pyinfra
state callback, after each operation a host ran, the phase it is in now
(:meth:`deploys.context.AgentContext.phase_now`). A failed operation changes no phase: the
host's outcome comes from the run record. Outside ``fleet deploy`` (plain ``pyinfra``) nothing
is sent."""

from __future__ import annotations

from typing import Any

from pyinfra import state
from pyinfra.api import BaseStateCallback, Host, State

from deploys.context import context_of
from fleet.control.rollout_events import send_phase

_last: dict[str, str] = {}  # the phase last sent per host


def tell(host_name: str, phase: str) -> None:
    """Send ``phase`` for ``host_name`` unless it is the one sent last."""
    if _last.get(host_name) != phase:
        _last[host_name] = phase
        send_phase(host_name, phase)


class PhaseReporter(BaseStateCallback):
    """Sends each host's phase as its operations run."""

    @staticmethod
    def operation_host_success(state: State, host: Host, op_hash: Any,
                               retry_count: int = 0) -> None:
        ctx = context_of(str(host.data.get("agent_name")))
        if ctx is not None:
            tell(host.name, ctx.phase_now())


_reporting = False


def report_phases() -> None:
    """Have this pyinfra process send its hosts' phases (:class:`PhaseReporter`), once."""
    global _reporting
    if not _reporting:
        state.add_callback_handler(PhaseReporter())
        _reporting = True
