"""Phase 6, services: the agent's hardened systemd unit, enabled and running; restarted only
when the release, config, registry copy, soul, environment or unit changed."""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, systemd

from deploys.context import CURRENT, AgentContext

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@deploy("Services")
def run(ctx: AgentContext) -> None:
    """Unit file, daemon-reload when it changed, start/enable, restart on any change."""
    unit = files.template(
        name=f"Unit {ctx.unit}", src=str(TEMPLATES / "fleet-agent.service.j2"),
        dest=f"/etc/systemd/system/{ctx.unit}", user="root", group="root", mode="644",
        agent=ctx.name, user_name=ctx.user, port=ctx.agent.gateway_port, etc_dir=ctx.etc_dir,
        state_dir=ctx.state_dir, current=CURRENT)
    triggers = [*ctx.restart_triggers, unit]
    was_running = bool(host.get_fact(SystemdStatus).get(ctx.unit))
    systemd.daemon_reload(name="systemd daemon-reload", _if=unit.did_change)
    ctx.service_ops.append(systemd.service(
        name=f"{ctx.unit} enabled and running", service=ctx.unit, running=True, enabled=True))
    if was_running:
        ctx.service_ops.append(systemd.service(
            name=f"Restart {ctx.unit} (release, config, soul, keys or unit changed)",
            service=ctx.unit, restarted=True,
            _if=lambda: any(op.did_change() for op in triggers)))
