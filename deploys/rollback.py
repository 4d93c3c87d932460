"""Rollback (``fleet rollback``): ``current`` back to an earlier release, restart, verify.

The agent's state dir is not touched. The outcome goes to the audit phase like a verify.
"""

from __future__ import annotations

from pyinfra.api import State
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import AgentContext, phase
from deploys.verify import run_nodectl


def rollback_node(state: State, host: Host, ctx: AgentContext, to: str | None) -> bool:
    """Run ``fleet-nodectl rollback`` and store its outcome as this run's verify result."""
    result = run_nodectl(host, ctx, ["rollback", *(["--to", to] if to else [])])
    healthy = bool(result.get("rolled_back") and result.get("healthy"))
    problems = result.get("problems") or [result.get("reason") or "rollback failed"]
    ctx.verify_result = {"ok": healthy, "problems": [] if healthy else problems,
                         "rollback": result, "facts": result.pop("facts", None)}
    ctx.rollback_target = result.get("release")
    return True


@phase("Rollback")
def run(ctx: AgentContext, to: str | None) -> None:
    """Switch to ``to`` (or the previous release), restart and verify."""
    ctx.check_ops.append(python.call(
        name=f"Roll {ctx.name} back to {to or 'the previous release'}",
        function=rollback_node, ctx=ctx, to=to))
