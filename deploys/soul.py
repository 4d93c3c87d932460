"""Phase 4, soul: the agent's soul file, read-only on the node; its sha256 is verified later."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from deploys.context import AgentContext


@deploy("Soul")
def run(ctx: AgentContext) -> None:
    """Copy ``souls/<agent>.md`` to ``/etc/fleet/<agent>/soul.md`` (0444, root)."""
    ctx.restart_triggers.append(files.put(
        name=f"Soul of {ctx.name}", src=str(ctx.soul_source), dest=f"{ctx.etc_dir}/soul.md",
        user="root", group="root", mode="444"))
