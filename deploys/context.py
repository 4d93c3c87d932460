"""Per-host deploy context: paths, names and controller-side inputs shared by the phases."""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

from pyinfra import host
from pyinfra.api import Host, deploy

from deploys.facts import NodeSnapshot, empty_snapshot
from deploys.lock import LOCK_DIR
from deploys.ops import UPLOAD_DIR, Changes, DiffReport, Outcome, probe
from fleet.control import expected, render
from fleet.control.records import add_diff, current_run_id
from fleet.control.release import Release, build_release
from fleet.control.secrets import Secrets, load_secrets
from fleet.core.digests import text_sha256
from fleet.core.masking import Masker
from fleet.core.registry import Agent, Registry, load_registry
from fleet.core.schedules import Schedule, unit_base, unit_glob
from fleet.core.work_config import (
    holds_forge_tokens,
    token_names,
)
from fleet.node.work.sandbox import POLICY_FILE as SANDBOX_POLICY_FILE

OPT = "/opt/fleet"
RELEASES = f"{OPT}/releases"
CURRENT = f"{OPT}/current"
NODECTL = f"{OPT}/bin/fleet-nodectl"  # the node helper's command: a launcher of its module
NODECTL_DIR = f"{OPT}/lib"
NODECTL_MODULE = "fleet_nodectl"  # fleet/node/nodectl.py, in NODECTL_DIR
NODECTL_CACHE = f"{NODECTL_DIR}/__pycache__"  # its compiled code, written by Python as root
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-fleet.conf"
UNIT_DIR = "/etc/systemd/system"
KEEP_RELEASES = 5


P = ParamSpec("P")
R = TypeVar("R")
OpT = TypeVar("OpT", bound=Outcome)


def phase(name: str) -> Callable[[Callable[Concatenate[AgentContext, P], R]],
                                  Callable[Concatenate[AgentContext, P], R]]:
    """pyinfra's ``@deploy(name)`` (operation names get the ``name | `` prefix) for a phase
    taking the agent's context first; the context knows the phase it is in (for the names of
    the operations it tracks). A phase returns what later phases need of it (the operations it
    planned, its outcome): ``deploy.py`` hands them on. Keeps the phase function's own
    signature for type checkers."""
    def decorate(func: Callable[Concatenate[AgentContext, P], R]
                 ) -> Callable[Concatenate[AgentContext, P], R]:
        planned = cast("Callable[Concatenate[AgentContext, P], R]", deploy(name)(func))

        @functools.wraps(func)
        def run(ctx: AgentContext, *args: P.args, **kwargs: P.kwargs) -> R:
            outer, ctx.phase_name = ctx.phase_name, name  # a phase run inside another (the
            try:  # probe of the changing phases, in preflight) gives the outer one its name back
                return planned(ctx, *args, **kwargs)
            finally:
                ctx.phase_name = outer
        return run
    return decorate


@functools.cache
def registry_at(path: str) -> Registry:
    """The registry at ``path``, loaded once per process."""
    return load_registry(path)


@dataclass
class AgentContext:
    """Everything the phases need to know about the agent on the current host: its inputs
    (registry, soul, the controller's secrets and the masker made of them), the node's
    snapshot, and the operations planned so far (for the run record). Phases do not hand
    each other data through it: each returns what a later phase needs (``deploy.py``)."""

    agent: Agent
    registry: Registry
    soul_source: Path
    rollback: bool = False  # this run rolls the node back (``--data action=rollback``)
    prestage: bool = False  # a later rollout stage with ``fleet.prestage`` (:meth:`prestages`)
    secrets: Secrets = field(default_factory=load_secrets)
    changes: list[tuple[str, Outcome]] = field(default_factory=list)
    node: NodeSnapshot = field(default_factory=empty_snapshot)
    phase_name: str = ""  # the phase running now (see :func:`phase`)
    operations: int = 0  # operations planned for this host (:meth:`plan`, :meth:`check`)
    unconverged: str = ""  # why :meth:`converged` said no: the first change it met
    _will_change: bool | None = field(default=None, init=False)  # see :meth:`finish_plan`
    _probing: bool = field(default=False, init=False)  # see :meth:`converged`

    @functools.cached_property
    def masker(self) -> Masker:
        """Hides every secret value (in every form it travels in) in what the deploy prints,
        logs or records: plain ``pyinfra`` output included, not only ``fleet``'s."""
        return Masker(self.secrets.values())

    def diffs(self) -> DiffReport:
        """Where this host's file operations put their ``--diff``: masked, into the run
        record."""
        return DiffReport(self.masker, lambda dest, lines: add_diff(current_run_id(), host.name,
                                                                    dest, lines))

    @property
    def will_change(self) -> bool:
        """Whether some operation of this host will change the node: decided at plan time,
        once every phase has planned (:meth:`finish_plan`); True until then. The rollout gate
        and the deploy lock run only then (``_if=``)."""
        return True if self._will_change is None else self._will_change

    def finish_plan(self) -> None:
        """Decide :attr:`will_change` from the planned operations (the last line of
        ``deploy.py``). At plan time, as pyinfra's ``will_change`` must be read: with ``-y``
        reading it at exec time would run command generators then, which pyinfra forbids."""
        if self._will_change is None:
            self._will_change = any(op.will_change for _, op in self.changes)

    def plan(self, operation: Callable[..., OpT], name: str, **arguments: Any) -> OpT:
        """Plan ``operation`` named ``name`` with ``arguments`` on this host and keep it for
        the run record (:meth:`track`): every state-changing operation of the phases is
        planned here. While :meth:`converged` probes, decide it from the node's snapshot
        instead (:func:`deploys.ops.probe`), planning nothing."""
        if self._probing:
            return cast(OpT, probe(operation, f"{self.phase_name} | {name}", arguments))
        self.operations += 1
        return self.track(name, operation(name=name, **arguments))

    def check(self, operation: Callable[..., OpT], name: str, **arguments: Any) -> OpT:
        """Plan ``operation``, a check that changes nothing (the gate, the lock, verify, the
        audit), counted with the host's operations but not kept as a change."""
        self.operations += 1
        return operation(name=name, **arguments)

    def converged(self, phases: Callable[[], object]) -> bool:
        """Whether ``phases`` (the deploy's state-changing phases, :func:`plan` in order)
        would change nothing on this host, decided from its snapshot alone by running them
        with every operation probed, not planned: then the deploy plans only its checks for
        the host. False at the first operation that would change something, or that cannot
        be decided from the snapshot (its name in :attr:`unconverged`); the phases are then
        planned in full. Nothing is planned, logged or recorded while probing."""
        kept = len(self.changes)
        self._probing = True
        try:
            phases()
        except Changes as change:
            self.unconverged = str(change)
            return False
        finally:
            self._probing = False
            del self.changes[kept:]
        return True

    def prestages(self) -> bool:
        """Whether this host gets the release sent and unpacked before its rollout gate
        (``deploys.release.prestage``), and so not in the release phase: asked to
        (:attr:`prestage`), a deploy (not a rollback), and the node's snapshot has the
        release neither unpacked nor current."""
        release = self.release.id
        return (self.prestage and not self.rollback and release not in self.node["releases"]
                and self.node["current"] != release)

    @property
    def probing(self) -> bool:
        """Whether :meth:`converged` is running the phases now."""
        return self._probing

    def track(self, name: str, op: OpT) -> OpT:
        """Keep ``op`` (a state-changing operation this host runs, named ``name``) for the
        run record; returns it. Names get the phase prefix, as in pyinfra's output."""
        prefix = f"{self.phase_name} | " if self.phase_name else ""
        self.changes.append((prefix + name, op))
        return op

    def phase_now(self) -> str:
        """The phase this host is in as it runs: the one of its first state-changing operation
        not run yet (lowercase: ``baseline``, ``release``, ...), then ``verify`` (``rollback``
        when it rolls back). Progress for the rollout's live view only."""
        pending = next((name for name, op in self.changes if not op.is_complete()), None)
        if pending is None:
            return "rollback" if self.rollback else "verify"
        return pending.split(" | ", 1)[0].lower() if " | " in pending else "deploy"

    def changed(self) -> list[str]:
        """Names of this host's operations that changed something, in order (when run)."""
        return [name for name, op in self.changes if op.is_complete() and op.did_change()]

    def planned(self) -> list[str]:
        """Names of this host's operations that would change something (at plan time)."""
        return [name for name, op in self.changes if op.will_change]

    @property
    def name(self) -> str:
        return self.agent.name

    @property
    def user(self) -> str:
        """The agent's system user (and group): the agent's name."""
        return self.agent.name

    @property
    def etc_dir(self) -> str:
        return f"/etc/fleet/{self.name}"

    @property
    def state_dir(self) -> str:
        return f"/var/lib/fleet/{self.name}"

    @property
    def unit(self) -> str:
        return f"fleet-agent-{self.name}.service"

    @property
    def release(self) -> Release:
        return build_release()

    @property
    def login_keys_file(self) -> str:
        """The login user's ``authorized_keys`` (operators' keys are added there)."""
        user = self.agent.ssh_user
        return f"{'/root' if user == 'root' else '/home/' + user}/.ssh/authorized_keys"

    def managed_paths(self) -> list[str]:
        """Every path the deploy manages for this agent (read in one NodeState snapshot)."""
        paths = [OPT, RELEASES, f"{OPT}/bin", NODECTL, NODECTL_DIR, NODECTL_CACHE,
                 f"{NODECTL_DIR}/{NODECTL_MODULE}.py", "/etc/fleet", self.etc_dir,
                 "/var/lib/fleet", self.state_dir, SSHD_DROPIN, *self.loaded_paths()]
        if self.agent.runtime_unit is None:  # one left from before is removed
            paths += [self.runtime_unit_path, self.ship_dir]
        paths += self.release_ship_paths() + self.release_ship_folders()
        if self.agent.runtime == "command":
            paths.append(self.ship_dir)
        paths += [f"{UNIT_DIR}/{unit}" for item in self.schedules
                  for unit in self.schedule_units(item)]
        paths += [f"{UNIT_DIR}/{unit}" for unit in self.sandbox_units]
        paths.append(f"{self.etc_dir}/{SANDBOX_POLICY_FILE}")
        return [*paths, UPLOAD_DIR] if self.registry.become else paths

    @property
    def sandbox_units(self) -> tuple[str, str]:
        """The agent's sandbox socket and the template unit of its front door."""
        return f"fleet-sandbox-{self.name}.socket", f"fleet-sandbox-{self.name}@.service"

    @property
    def schedules(self) -> list[Schedule]:
        """The agent's schedules (:meth:`~fleet.core.registry.Registry.schedules_of`: the
        registry's, and work intake on the orchestrator)."""
        return self.registry.schedules_of(self.agent)

    def listed_units(self) -> tuple[str, ...]:
        """The units the node's snapshot asks about by name (its ``schedules.timers``): the
        schedules' timers, the sandbox socket and the runtime's unit."""
        runtime = (self.agent.runtime_unit,) if self.agent.runtime_unit else ()
        return (*(self.schedule_units(item)[0] for item in self.schedules),
                self.sandbox_units[0], *runtime)

    def schedule_units(self, schedule: Schedule) -> tuple[str, str]:
        """The timer and the service of one of the agent's schedules."""
        base = unit_base(self.name, schedule.name)
        return f"{base}.timer", f"{base}.service"

    @property
    def schedule_glob(self) -> str:
        """Every schedule unit file of this agent, the registry's or left from before (the
        node's snapshot lists them: one the registry no longer has is removed)."""
        return f"{UNIT_DIR}/{unit_glob(self.name)}"

    def loaded_paths(self) -> list[str]:
        """What the running agent loaded when it started (the release, its files, units): one
        modified after the agent's unit became active needs a restart, also when the deploy
        that wrote it failed before restarting (:func:`deploys.facts.newer_than_unit`)."""
        etc = self.etc_dir
        return [CURRENT, f"{etc}/registry.yaml", f"{etc}/config.json", f"{etc}/soul.md",
                self.env_path, self.unit_path, *self.runtime_paths()]

    @property
    def env_path(self) -> str:
        """The service environment (secrets): root's, 0600; systemd reads it as root."""
        return f"{self.etc_dir}/env"

    @property
    def env_previous_path(self) -> str:
        """The environment before the deploy changed it: a rollback restores it
        (``fleet-nodectl rollback``), so a bad secret is undone with the release."""
        return f"{self.etc_dir}/env.previous"

    @property
    def runtime_unit_path(self) -> str:
        """Where the agent's runtime unit file is (or was, when the registry asks for none)."""
        return f"/etc/systemd/system/fleet-runtime-{self.name}.service"

    @property
    def ship_dir(self) -> str:
        """Where the operator's own runtime finds its shipped files (its working directory):
        a symlink to this agent's files in the current release (:attr:`ship_target`), so a
        release switch or rollback brings back the files deployed with that release."""
        return f"{self.etc_dir}/ship"

    @property
    def ship_target(self) -> str:
        """What :attr:`ship_dir` points at."""
        return f"{CURRENT}/ship/{self.name}"

    def release_ship_dir(self) -> str:
        """This agent's shipped files inside the release this deploy installs."""
        return f"{RELEASES}/{self.release.id}/ship/{self.name}"

    def release_ship_paths(self) -> list[str]:
        """The shipped files where this deploy writes them (none in a rollback: it installs
        no release)."""
        if self.agent.runtime != "command" or self.rollback:
            return []
        return [f"{self.release_ship_dir()}/{relative}" for relative in self.agent.runtime_ship]

    def release_ship_folders(self) -> list[str]:
        """The folders holding the shipped files in the release (parents first)."""
        if self.agent.runtime != "command" or self.rollback:
            return []
        base = self.release_ship_dir()
        return sorted({str(PurePosixPath(base, relative).parent)
                       for relative in self.agent.runtime_ship} | {base})

    def runtime_paths(self) -> list[str]:
        """The runtime's unit file and shipped files (none without a runtime)."""
        unit = self.agent.runtime_unit
        if unit is None:
            return []
        return [f"/etc/systemd/system/{unit}",
                *(f"{self.ship_dir}/{relative}" for relative in self.agent.runtime_ship)]

    @property
    def unit_path(self) -> str:
        return f"/etc/systemd/system/{self.unit}"

    def node_registry(self) -> str:
        """The registry copy for the node: no controller paths, no operator keys, other agents'
        config and shipped runtime files left out (so one agent's config change touches only
        that agent's node); this agent's soul and shipped files named where they are, beside
        the copy."""
        data = self.registry.to_dict()
        data["fleet"] = {key: value for key, value in data["fleet"].items()
                         if key not in ("ssh_key", "known_hosts")}
        for name, entry in data["wizards"].items():
            entry.pop("authorized_keys", None)
            entry.pop("schedules", None)  # on the node as their units: a change restarts nothing
            runtime = entry.get("runtime")
            if name == self.name:
                entry["soul"] = "soul.md"  # beside the copy: /etc/fleet/<agent>/soul.md
                if isinstance(runtime, dict):  # shipped beside the copy too: ship/<path>
                    runtime["ship"] = [f"ship/{path}" for path in runtime["ship"]]
            else:  # not on this node
                entry.pop("soul", None)
                entry.pop("config", None)
                if isinstance(runtime, dict):
                    runtime["ship"] = []
        return render.registry_copy(data)

    def config_json(self) -> str:
        """The agent config file; its sha256 is the config hash /health reports."""
        return expected.config_json(self.agent)

    def config_hash(self) -> str:
        return expected.config_hash(self.agent)

    def soul_sha256(self) -> str:
        return text_sha256(self.soul_source.read_bytes())  # unreadable: the deploy fails

    def public_env(self) -> dict[str, str]:
        """The non-secret settings of the agent's service environment."""
        return {
            "FLEET_AGENT": self.name,
            "FLEET_REGISTRY": f"{self.etc_dir}/registry.yaml",
            "FLEET_STATE_DIR": self.state_dir,
            "FLEET_CONFIG": f"{self.etc_dir}/config.json",
            "FLEET_SOUL": f"{self.etc_dir}/soul.md",
            "FLEET_RELEASE_DIR": CURRENT,
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def env_file(self) -> str:
        """``/etc/fleet/<agent>/env``: public settings then secrets, in systemd's
        ``EnvironmentFile=`` syntax (double-quoted values, :mod:`fleet.core.envfile`)."""
        secrets = self.secrets.for_agent(self.name)
        work = self.registry.work
        if work is not None and not holds_forge_tokens(work, self.agent.role,
                                                       self.agent.capabilities):
            secrets = {key: value for key, value in secrets.items()
                       if key not in token_names(work)}  # least privilege: no forge token
        return render.env_file({**self.public_env(), **secrets})


_contexts: dict[str, AgentContext] = {}


def context_of(name: str) -> AgentContext | None:
    """The context made for agent ``name`` in this process, if any."""
    return _contexts.get(name)


def stage_of(target: Host) -> int:
    """This process's rollout stage (0 outside ``fleet deploy`` or for its first stage)."""
    value = target.data.get("rollout_stage")
    return int(value) if isinstance(value, int) and value > 0 else 0


def load_node(ctx: AgentContext) -> None:
    """Read the host's NodeState snapshot once (with preflight's basics, in the same round
    trip); every phase decides from it."""
    from deploys.facts import NodeState

    ctx.node = host.get_fact(NodeState, paths=ctx.managed_paths(), user=ctx.user, unit=ctx.unit,
                             current=CURRENT, releases_dir=RELEASES,
                             keys_file=ctx.login_keys_file, lock_dir=LOCK_DIR,
                             schedule_glob=ctx.schedule_glob.rstrip("*"),
                             timers=ctx.listed_units(),
                             links=(ctx.ship_dir,) if ctx.agent.runtime == "command" else ())


@functools.cache
def controller_secrets(registry_path: str) -> Secrets:
    """The controller's secrets (``$FLEET_SECRETS``, else the registry's sealed file, opened
    in memory), read once per deploy process: every host's context holds them."""
    return load_secrets(registry=registry_at(registry_path))


def agent_context() -> AgentContext:
    """The context of the host pyinfra is planning for now (one per host and process)."""
    name = host.data.agent_name
    if name not in _contexts:
        registry = registry_at(host.data.registry_path)
        _contexts[name] = AgentContext(agent=registry.get(name), registry=registry,
                                       soul_source=Path(host.data.soul_path),
                                       rollback=host.data.get("action") == "rollback",
                                       prestage=host.data.get("prestage") is True
                                       and stage_of(host) > 0,
                                       secrets=controller_secrets(host.data.registry_path))
    return _contexts[name]


DEPLOY_FILE_MODULE = "_fleet_deploy_file"


def name_as_module(deploy_file: str) -> None:
    """Name the deploy file pyinfra runs (``deploy.py``, executed without a module of its
    own) in ``sys.modules``, once per process. pyinfra orders each operation by walking the
    call stack with ``inspect``, which looks every frame's file up among the files of
    ``sys.modules`` and, for a file that is none of theirs, scans all of them again: twice
    per operation, about 1 ms each with a controller's 1,500 modules. Named, the lookup hits
    its cache."""
    path = os.path.abspath(deploy_file)
    if getattr(sys.modules.get(DEPLOY_FILE_MODULE), "__file__", None) != path:
        module = types.ModuleType(DEPLOY_FILE_MODULE, "the deploy file pyinfra runs")
        module.__file__ = path
        sys.modules[DEPLOY_FILE_MODULE] = module
