"""Phase 6, services: the agent's hardened systemd unit, enabled and running; restarted only
when the release, config, registry copy, soul, environment or unit changed, in this deploy or
after the unit last started (an earlier deploy that failed before its restart: the node's
snapshot has each file's mtime and the unit's start). A runtime unit the registry no longer
asks for is stopped and removed. The agent's schedules (:mod:`deploys.schedules`): their timers
and services, and the removal of those the registry no longer has; they restart no agent.

As in pyinfra-examples, the daemon-reload and the restart are pyinfra's own operations hung on
``did_change`` (``_if=``). They are planned only when a file they depend on will change, so a
no-change deploy neither lists nor runs them; the restart is left out when the unit was not
running (then it is started with the new files). Right before a restart, on the same condition,
the agent's state dir is snapshotted on the node (``fleet-nodectl state snapshot``), so a
deploy that changes nothing snapshots nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import PurePosixPath

from pyinfra.operations import files, server, systemd

from deploys import schedules
from deploys.context import CURRENT, NODECTL, AgentContext, phase
from deploys.facts import newer_than_unit
from deploys.ops import Outcome, directories, managed_file, symlink, unit_running
from fleet.control import render
from fleet.control.templates import read_template
from fleet.core.serving import GATEWAY_WORKERS
from fleet.node.nodectl import RELEASE_ID_RE

UNIT_TEMPLATE = "fleet-agent.service.j2"
RUNTIME_TEMPLATE = "fleet-runtime.service.j2"
RUNTIME_UNIT_FILE = "Runtime unit file"
RUNTIME_RUNNING = "Runtime service enabled and running (it restarts with the agent service)"
BUILTIN_RUNTIME = ("/usr/bin/python3", "-m", "fleet.runtime")  # see release.ENTRY_POINTS
MEMORY_MAX = "1G"  # the unit's MemoryMax= (a gateway uses ~150 MB)
TASKS_MAX = 512  # its TasksMax=: 2 workers x (32 request + bus delivery threads), with room
UNIT_FILE = "Agent unit file"
RELOAD = "systemd daemon-reload (unit file changed)"
RUNNING = "Agent service enabled and running"
RESTART = ("Agent service restarted (its release, config, soul, env or unit changed, now or "
           "since it started)")
SNAPSHOT = "Agent state snapshotted (before its restart)"
RUNTIME_STOPPED = "Runtime service stopped and disabled (the registry asks for no runtime)"
RUNTIME_REMOVED = "Runtime unit file removed"
RUNTIME_SHIP_REMOVED = "Runtime's shipped files removed"
RUNTIME_SHIP_LINK = "Runtime files: the current release's"
RUNTIME_FOLDERS = "Runtime folders in the release"
RUNTIME_RELOAD = "systemd daemon-reload (runtime unit removed)"


def unit_text(ctx: AgentContext) -> str:
    """The agent's systemd unit, rendered from ``fleet/control/templates/fleet-agent.service.j2``
    (:func:`fleet.control.render.unit_file`)."""
    return render.unit_file(read_template(UNIT_TEMPLATE), agent=ctx.name, user_name=ctx.user,
                            port=ctx.agent.gateway_port, etc_dir=ctx.etc_dir,
                            state_dir=ctx.state_dir, current=CURRENT, memory_max=MEMORY_MAX,
                            tasks_max=TASKS_MAX, workers=GATEWAY_WORKERS)


def runtime_unit_text(ctx: AgentContext) -> str:
    """The agent's runtime unit: the built-in runtime or the operator's command, with the
    gateway's environment and sandbox, started and restarted with the gateway."""
    agent = ctx.agent
    if agent.runtime == "command":
        argv, work_dir = agent.runtime_command, ctx.ship_dir
    else:
        argv, work_dir = BUILTIN_RUNTIME, ctx.state_dir
    extra_env = [("FLEET_MODEL", agent.model), ("FLEET_PROVIDER_URL", agent.provider_url or ""),
                 ("FLEET_PROVIDER_KEY_ENV", agent.provider_key or ""),
                 ("FLEET_GATEWAY_URL", f"http://127.0.0.1:{agent.gateway_port}")]
    return render.unit_file(
        read_template(RUNTIME_TEMPLATE), agent=ctx.name, kind=agent.runtime,
        user_name=ctx.user, etc_dir=ctx.etc_dir, state_dir=ctx.state_dir, current=CURRENT,
        memory_max=MEMORY_MAX, tasks_max=TASKS_MAX, gateway_unit=ctx.unit, work_dir=work_dir,
        exec_start=render.unit_command(argv, what=f"wizards.{ctx.name}.runtime.command"),
        extra_env=[render.unit_env(name, value) for name, value in extra_env])


def runtime(ctx: AgentContext) -> list[Outcome]:
    """The runtime's shipped files and unit (none when the agent runs no runtime); the
    operations whose change must restart the agent."""
    unit = ctx.agent.runtime_unit
    if unit is None:
        return []
    changed = []
    if ctx.agent.runtime == "command":  # shipped with the release: a rollback brings them back
        ctx.plan(directories, RUNTIME_FOLDERS, node=ctx.node,
                 specs=[(folder, "root", "root", "755")
                        for folder in ctx.release_ship_folders()])
        for relative, dest in zip(ctx.agent.runtime_ship, ctx.release_ship_paths(),
                                  strict=True):
            source = ctx.registry.path.parent / relative
            mode = "755" if source.stat().st_mode & 0o100 else "644"
            changed.append(ctx.plan(managed_file, f"Runtime file {relative}", dest=dest,
                                    content=source.read_text(encoding="utf-8"), user="root",
                                    group="root", mode=mode, node=ctx.node, diffs=ctx.diffs()))
        # compatibility: until 0.3.0: a ship folder, not a link
        changed.append(ctx.plan(symlink, RUNTIME_SHIP_LINK, path=ctx.ship_dir,
                                target=ctx.ship_target, node=ctx.node))
    unit_file = ctx.plan(managed_file, RUNTIME_UNIT_FILE, dest=f"/etc/systemd/system/{unit}",
                         content=runtime_unit_text(ctx), user="root", group="root", mode="644",
                         node=ctx.node, diffs=ctx.diffs())
    return [*changed, unit_file]


@phase("Services")
def run(ctx: AgentContext, restart_on: Sequence[Outcome],
        env_write: Outcome | None = None) -> list[Outcome]:
    """Unit file, daemon-reload if it changed, enabled and running, restart when the unit or
    one of ``restart_on`` (the earlier phases' writes the agent loads) changes; the snapshot
    before that restart keeps the environment the agent ran with (``env_write``: the keys
    phase's write, which keeps the one it replaces as ``env.previous``). Returns the
    operations that start or restart the agent's services (the audit reports a restart)."""
    unit = ctx.plan(managed_file, UNIT_FILE, dest=ctx.unit_path, content=unit_text(ctx),
                    user="root", group="root", mode="644", node=ctx.node, diffs=ctx.diffs())
    runtime_ops = runtime(ctx)
    schedule_files, timers = schedules.unit_files(ctx)
    unit_files = [unit, *runtime_ops[-1:], *schedule_files]
    stale_units = bool(ctx.node["unit"].get("need_reload"))  # a deploy failed before reload
    if stale_units or any(op.will_change for op in unit_files):
        ctx.plan(systemd.daemon_reload, RELOAD,
                 _if=lambda: stale_units or any(op.did_change() for op in unit_files))
    runtime_removed(ctx)
    schedules.removed(ctx)
    service_ops: list[Outcome] = [
        ctx.plan(unit_running, RUNNING, unit=ctx.unit, node=ctx.node)]
    if ctx.agent.runtime_unit:
        service_ops.append(ctx.plan(unit_running, RUNTIME_RUNNING, unit=ctx.agent.runtime_unit,
                                    node=ctx.node, listed=True))
    triggers = [unit, *runtime_ops, *restart_on]
    pending = newer_than_unit(ctx.node, ctx.loaded_paths())  # written, never loaded

    def restart_due() -> bool:
        return bool(pending) or any(op.did_change() for op in triggers)

    if ctx.node["unit"].get("active") == "active" and (
            pending or any(op.will_change for op in triggers)):
        env_replaced = ctx.env_path in pending or (  # the running agent has env.previous
            env_write is not None and env_write.will_change)
        ctx.plan(server.shell, SNAPSHOT, commands=[snapshot_command( ctx, env_replaced)],
                 _if=restart_due)
        service_ops.append(ctx.plan(systemd.service, RESTART, service=ctx.unit, restarted=True,
                                    _if=restart_due))
    schedules.timers_started(ctx, timers)
    return service_ops


def snapshot_command(ctx: AgentContext, env_replaced: bool = False) -> str:
    """``fleet-nodectl state snapshot`` of the agent's state dir, keeping the registry's
    ``state.snapshots`` newest, with the release running now and the one this deploy brings
    (``fleet rollback --with-state`` finds the snapshot by the latter), and the environment
    the running release has (``env.previous`` when this deploy replaced it)."""
    args = ["state", "snapshot", "--agent", ctx.name, "--keep", str(ctx.agent.state_snapshots),
            "--env-before", "env.previous" if env_replaced else "env"]
    before = ctx.node["current"]
    if before and RELEASE_ID_RE.fullmatch(before):
        args += ["--release-before", before]
    return shlex.join([NODECTL, *args, "--release-after", ctx.release.id])


def runtime_removed(ctx: AgentContext) -> None:
    """A runtime unit left on the node after the registry stopped asking for one: stopped,
    disabled and deleted with its shipped files (a broken one would fail every later
    deploy). Planned only when its unit file is there, so it costs a normal deploy nothing."""
    if ctx.agent.runtime_unit is not None or ctx.runtime_unit_path not in ctx.node["paths"]:
        return
    unit = PurePosixPath(ctx.runtime_unit_path).name
    ctx.plan(systemd.service, RUNTIME_STOPPED, service=unit, running=False, enabled=False)
    removed = ctx.plan(files.file, RUNTIME_REMOVED, path=ctx.runtime_unit_path, present=False)
    shipped = (info := ctx.node["paths"].get(ctx.ship_dir)) and info["type"]
    if shipped == "symbolic link":
        ctx.plan(files.link, RUNTIME_SHIP_REMOVED, path=ctx.ship_dir, present=False)
    elif shipped == "directory":  # an earlier layout's folder
        ctx.plan(files.directory, RUNTIME_SHIP_REMOVED, path=ctx.ship_dir, present=False)
    ctx.plan(systemd.daemon_reload, RUNTIME_RELOAD, _if=removed.did_change)
