"""Rollback (``fleet rollback``): ``current`` back to an earlier release, restart, verify.

The agent's state dir is not touched, unless ``--data rollback_with_state=true`` (``fleet
rollback --with-state``): then it is put back as the snapshot taken before the release being
rolled back was deployed, and a node without that snapshot is not rolled back at all. The
outcome goes to the audit phase like a verify.
The release asked for (``--data rollback_to=ID``) must be a release id, matched in full; it
is checked again on the node by ``fleet-nodectl``.
"""

from __future__ import annotations

from pyinfra.api import DeployError

from deploys import lock
from deploys.context import NODECTL, AgentContext, phase
from deploys.preflight import Preflight
from deploys.verify import Check, agent_args, agent_verified, runtime_args
from fleet.control.release import check_release_id
from fleet.core.validate import ValidationError

ROLLBACK = "Roll back: switch, restart and verify"


@phase("Rollback")
def run(ctx: AgentContext, preflight: Preflight, to: str | None,
        with_state: bool = False) -> Check:
    """Switch to ``to`` (or the previous release), restart and verify; ``with_state``: the
    agent's state too (its runtime stopped and started with it)."""
    try:
        target = ["--to", check_release_id(to)] if to is not None else []
    except ValidationError as exc:  # pyinfra prints its own errors as one line
        raise DeployError(f"rollback_to: {exc}") from None
    return Check(op=ctx.check(agent_verified, ROLLBACK, nodectl=NODECTL, owner=lock.owner(),
                              stale_owner=preflight.stale_lock,
                              args=["rollback", *target, *state_args(ctx, with_state),
                                    *agent_args(ctx)]))


def state_args(ctx: AgentContext, with_state: bool) -> list[str]:
    """``--with-state AGENT`` and the runtime unit (stopped while the state is restored)."""
    return ["--with-state", ctx.name, *runtime_args(ctx)] if with_state else []
