"""Rollout gate: a stage's hosts wait here until the previous stage has passed.

``fleet deploy`` starts the next stage's pyinfra process while the current one runs, so its
start-up, connections and read-only planning overlap; its first operation waits for the
runner's verdict on the previous stage (in the run record) and nothing changes on these hosts
before it. A failed previous stage marks them skipped.
"""

from __future__ import annotations

import os
import time

from pyinfra import logger
from pyinfra.api import State
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import AgentContext, phase
from fleet.records import current_run_id, load_record, update_host

POLL_S = 0.05


def stage_verdict(run_id: str, stage: int) -> bool | None:
    """The runner's verdict on ``stage`` of the run: passed, failed, or None (not yet)."""
    try:
        verdicts = load_record(run_id).get("verdicts", {})
    except (FileNotFoundError, ValueError):
        return None
    verdict = verdicts.get(str(stage))
    return None if verdict is None else bool(verdict)


def wait_for_stage(state: State, host: Host, stage: int, runner_pid: int) -> bool:
    """Block (cooperatively) until ``stage`` has a verdict; False marks this host skipped."""
    run_id = current_run_id()
    while (verdict := stage_verdict(run_id, stage)) is None:
        if os.getppid() != runner_pid:
            verdict = False
            break
        time.sleep(POLL_S)
    if verdict:
        return True
    update_host(run_id, host.name, {"status": "skipped", "reason": (
        f"not deployed: rollout stage {stage} did not pass")})
    host.log_styled(f"not deployed: rollout stage {stage} did not pass", fg="yellow",
                    log_func=logger.warning)
    return False


@phase("Rollout")
def run(ctx: AgentContext, stage: int, runner_pid: int) -> None:
    """Wait for the previous rollout stage before anything changes on this host."""
    ctx.check_ops.append(python.call(
        name=f"Wait until rollout stage {stage} has passed", function=wait_for_stage,
        stage=stage, runner_pid=runner_pid))
