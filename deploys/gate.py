"""Rollout gate: a later stage's hosts pass here only when the earlier stages passed.

``fleet deploy`` runs all its stages in one pyinfra process: it gives ``deploy.py`` once per
stage (``--data rollout=canary|worker1,worker2|...``), and pass N of the file plans the phases
of stage N's hosts only. Pass N (N >= 1) starts with this gate on every host of the rollout:
pyinfra orders operations so that each host's come in the order they were planned, so on the
earlier stages' hosts the gate follows their audit, and on stage N's hosts it precedes every
change; pyinfra runs one operation at a time on all hosts. The gate counts the earlier stages'
hosts that failed or whose audit did not record ``ok``; more than ``max_failures`` fails the
hosts of stage N and later (marked skipped in the run record), so nothing changes on them.
"""

from __future__ import annotations

from pyinfra import logger
from pyinfra.api import State
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import AgentContext, phase
from fleet.records import current_run_id, load_record, update_host
from fleet.rollout import decode_stages


def stage_of(host: Host) -> int | None:
    """The rollout stage of ``host`` in a ``fleet deploy`` run, None outside one."""
    value = host.data.get("rollout")
    if not value:
        return None
    for index, hosts in enumerate(decode_stages(value)):
        if host.name in hosts:
            return index
    return None


def failures_before(state: State, stages: list[list[str]], stage: int) -> int:
    """Hosts of the stages before ``stage`` that failed or were not recorded ``ok``."""
    failed = {host.name for host in state.failed_hosts}
    try:
        entries = load_record(current_run_id()).get("hosts", {})
    except (FileNotFoundError, ValueError):
        entries = {}
    return sum(name in failed or entries.get(name, {}).get("status") != "ok"
               for hosts in stages[:stage] for name in hosts)


def pass_gate(state: State, host: Host, stage: int, rollout: str, max_failures: int) -> bool:
    """True when the earlier stages passed (or this host's stage came before them);
    otherwise mark this host skipped (it fails)."""
    own = stage_of(host)
    if own is not None and own < stage:
        return True
    failures = failures_before(state, decode_stages(rollout), stage)
    if failures <= max_failures:
        return True
    reason = (f"not deployed: {failures} host(s) of earlier rollout stages failed "
              f"(allowed: {max_failures})")
    update_host(current_run_id(), host.name, {"status": "skipped", "reason": reason})
    host.log_styled(reason, fg="yellow", log_func=logger.warning)
    return False


@phase("Rollout")
def run(ctx: AgentContext, stage: int, rollout: str, max_failures: int) -> None:
    """Go on into ``stage`` only when the earlier rollout stages passed."""
    ctx.check_ops.append(python.call(
        name=f"Rollout stage {stage}: earlier stages passed", function=pass_gate,
        stage=stage, rollout=rollout, max_failures=max_failures))
