"""Rollback (``fleet rollback``): ``current`` back to an earlier release, restart, verify.

The agent's state dir is not touched. The outcome goes to the audit phase like a verify.
"""

from __future__ import annotations

from deploys import lock
from deploys.context import NODECTL, AgentContext, phase
from deploys.verify import agent_args, agent_verified

ROLLBACK = "Roll back: switch, restart and verify"


@phase("Rollback")
def run(ctx: AgentContext, to: str | None) -> None:
    """Switch to ``to`` (or the previous release), restart and verify."""
    target = ["--to", to] if to else []
    ctx.check = agent_verified(name=ROLLBACK, nodectl=NODECTL, owner=lock.owner(),
                               args=["rollback", *target, *agent_args(ctx)])
