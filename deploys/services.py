"""Phase 6, services: the agent's hardened systemd unit, enabled and running; restarted only
when the release, config, registry copy, soul, environment or unit changed."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Template

from deploys import webhook
from deploys.context import CURRENT, AgentContext, phase
from deploys.ops import agent_service, managed_file

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "fleet-agent.service.j2"


def unit_text(ctx: AgentContext) -> str:
    """The agent's systemd unit, rendered from ``templates/fleet-agent.service.j2``."""
    template = Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    return template.render(agent=ctx.name, user_name=ctx.user, port=ctx.agent.gateway_port,
                           etc_dir=ctx.etc_dir, state_dir=ctx.state_dir, current=CURRENT)


@phase("Services")
def run(ctx: AgentContext) -> None:
    """Unit file, then the service: daemon-reload, enable, start, or restart on any change."""
    unit = managed_file(name=f"Unit {ctx.unit}", dest=ctx.unit_path, content=unit_text(ctx),
                        user="root", group="root", mode="644", node=ctx.node)
    ctx.service_ops.append(agent_service(
        name=f"{ctx.unit} enabled, running, restarted if anything it uses changed",
        unit=ctx.unit, node=ctx.node, unit_file=unit, triggers=list(ctx.restart_triggers)))
    webhook.services(ctx)
