"""Phase 4, soul: the agent's soul file, read-only on the node; its sha256 is verified later."""

from __future__ import annotations

from deploys.context import AgentContext, phase
from deploys.ops import Outcome, managed_file

SOUL = "Agent soul (read-only)"


@phase("Soul")
def run(ctx: AgentContext) -> Outcome:
    """Copy ``souls/<agent>.md`` to ``/etc/fleet/<agent>/soul.md`` (0444, root); returns the
    write (its change restarts the agent)."""
    return ctx.plan(managed_file, SOUL, dest=f"{ctx.etc_dir}/soul.md",
                    content=ctx.soul_source.read_text(encoding="utf-8"), user="root", group="root",
                    mode="444", node=ctx.node, diffs=ctx.diffs())
