"""Phase 6, services: the agent's hardened systemd unit, enabled and running; restarted only
when the release, config, registry copy, soul, environment or unit changed.

As in pyinfra-examples, the daemon-reload and the restart are pyinfra's own operations hung on
``did_change`` (``_if=``). They are planned only when a file they depend on will change, so a
no-change deploy neither lists nor runs them; the restart is left out when the unit was not
running (then it is started with the new files).
"""

from __future__ import annotations

from jinja2 import Template
from pyinfra.operations import systemd

from deploys import webhook
from deploys.context import CURRENT, AgentContext, phase
from deploys.ops import managed_file, unit_running
from fleet.templates import read_template

UNIT_TEMPLATE = "fleet-agent.service.j2"
MEMORY_MAX = "1G"  # the unit's MemoryMax= (a gateway uses ~150 MB)
TASKS_MAX = 512  # its TasksMax=: 2 workers x (32 request + bus delivery threads), with room
UNIT_FILE = "Agent unit file"
RELOAD = "systemd daemon-reload (unit file changed)"
RUNNING = "Agent service enabled and running"
RESTART = "Agent service restarted (its release, config, soul, env or unit changed)"


def unit_text(ctx: AgentContext) -> str:
    """The agent's systemd unit, rendered from ``fleet/templates/fleet-agent.service.j2``."""
    template = Template(read_template(UNIT_TEMPLATE), keep_trailing_newline=True)
    return template.render(agent=ctx.name, user_name=ctx.user, port=ctx.agent.gateway_port,
                           etc_dir=ctx.etc_dir, state_dir=ctx.state_dir, current=CURRENT,
                           memory_max=MEMORY_MAX, tasks_max=TASKS_MAX)


@phase("Services")
def run(ctx: AgentContext) -> None:
    """Unit file, daemon-reload if it changed, enabled and running, restart on any change."""
    unit = ctx.track(UNIT_FILE, managed_file(
        name=UNIT_FILE, dest=ctx.unit_path, content=unit_text(ctx), user="root", group="root",
        mode="644", node=ctx.node))
    if unit.will_change:
        ctx.track(RELOAD, systemd.daemon_reload(name=RELOAD, _if=unit.did_change))
    ctx.service_ops.append(ctx.track(RUNNING, unit_running(name=RUNNING, unit=ctx.unit,
                                                           node=ctx.node)))
    triggers = [unit, *ctx.restart_triggers]
    if ctx.node["unit"].get("active") == "active" and any(op.will_change for op in triggers):
        ctx.service_ops.append(ctx.track(RESTART, systemd.service(
            name=RESTART, service=ctx.unit, restarted=True,
            _if=lambda: any(op.did_change() for op in triggers))))
    webhook.services(ctx)
