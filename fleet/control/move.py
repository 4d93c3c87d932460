"""``fleet move AGENT --to HOST``: an agent, with its identity, soul, config, memory and bus
inbox and outbox, from its server to another.

The order makes every message sent to the agent arrive once:

1. **check**: ``--to`` is a host, not the agent's own, not another agent's (unless shared on
   another gateway port), its SSH host key pinned in the registry's ``known_hosts``; both
   servers answer over SSH.
2. **prepare the new server**: the agent is deployed there from a copy of the registry with
   its new host (beside the registry, removed right after): release, soul, config, keys (the
   same bus key: the secrets are the agent's), units. Nobody sends to it yet: no registry a
   peer or the operator reads names that address.
3. **hand over**: on the old server the agent's runtime, then its gateway, stop (from then on
   it accepts nothing: peers' messages wait in their own durable outboxes and are retried),
   and its final snapshot is taken: the inbox with every message it acknowledged and the
   store's dedup of sender ids, its outbox (carried: delivered from the new server), memory.
4. **carry**: that snapshot is pulled here (sha256-checked), imported and restored on the new
   server, which starts and answers ``/health``.
5. **registry**: the one edit (shown as a diff before it is written) is written.
6. **redeploy**: every agent gets the new registry copy (peers restart with it and their
   outboxes deliver to the new address; a message the old server stored and retried is a
   duplicate the carried dedup drops); the deploy's verify checks each one.
7. **retire**: the old server's units and ``/etc/fleet/AGENT`` (its secrets) are removed; its
   state dir and snapshots stay unless ``--purge``.

A failure before step 5 leaves the agent where it was: the old server's agent is started and
verified again, the new server's copy removed, the registry unchanged. From step 5 on the
agent runs on the new server and the error says what is left to do. Each move is recorded
like a deploy run (``kind: move``) in the records dir.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from bus.timestamps import utc_timestamp
from fleet.control import state
from fleet.control.hosts import host_pattern, keys_of, require_known_hosts
from fleet.control.records import (
    RUN_ID_ENV,
    MoveRecord,
    MoveStep,
    new_run_id,
    record_path,
    update_run,
)
from fleet.control.registry_edit import diff, set_host
from fleet.control.rollout import RolloutOptions, RolloutResult, deploy_fleet
from fleet.control.status import ssh_command
from fleet.core.atomic import write_atomic
from fleet.core.errors import FleetError
from fleet.core.registry import (
    Agent,
    Registry,
    host_identity,
    load_registry,
    parse_registry,
    printable,
)
from fleet.core.validate import NOT_A_HOST, host_problem, unsafe_character
from fleet.node.nodectl import Retired

Echo = Callable[[str], None]
MAX_HOST = 253
SSH_TIMEOUT = 10.0


class MoveError(FleetError):
    """A move was refused (nothing changed) or failed; the message says where the agent runs."""


def check_target(registry: Registry, name: str, to: str, shared: bool = False) -> Agent:
    """The agent ``name`` as it would be on host ``to``, once ``to`` is a host name or IP
    address (not an option, no control character, at most 253 characters), not its host now,
    not another agent's (``shared``: allowed on another gateway port), with its SSH host key
    pinned in the registry's ``known_hosts``. Raises :class:`MoveError`."""
    agent = registry.get(name)
    shown = printable(to[:80])
    if to.startswith("-"):
        raise MoveError(f"--to '{shown}' looks like an option, not a host",
                        hint="Give the new server's host name or IP address: --to HOST.")
    problem = NOT_A_HOST if len(to) > MAX_HOST or unsafe_character(to) else host_problem(to)
    if problem == NOT_A_HOST:
        problem += f" (at most {MAX_HOST} characters; no scheme, port, path or spaces)"
    if problem:
        raise MoveError(f"--to '{shown}' {problem}",
                        hint="Give the new server's host name or IP address: --to HOST.")
    if host_identity(to) == host_identity(agent.host):
        raise MoveError(f"{name} already runs on {to}",
                        hint="Name another server with --to.")
    for other in registry:
        if other.name != name and host_identity(other.host) == host_identity(to):
            if other.gateway_port == agent.gateway_port:
                raise MoveError(f"{to}:{agent.gateway_port} is {other.name}'s gateway: two "
                                "agents cannot share a host and a gateway port",
                                hint="Pick a free server, or give one of them another "
                                     "gateway_port first.")
            if not shared:
                raise MoveError(f"{to} is {other.name}'s host", hint="Pass --shared-host to "
                                "run both agents there, or pick a free server.")
    moved = dataclasses.replace(agent, host=to)
    known = require_known_hosts(registry)
    if not keys_of(known, moved):
        raise MoveError(f"{known}: no host key pinned for {host_pattern(moved)}: first "
                        "contact is explicit",
                        hint=f"Check its fingerprint against the server's own, then add it: "
                             f"`ssh-keyscan -p {moved.ssh_port} {to} >> {known}`.")
    return moved


@dataclass(frozen=True)
class MovePlan:
    """A checked move: the agent now and on its new host, and the registry edit."""

    registry: Registry
    agent: Agent
    moved: Agent
    before: str  # the registry file's text
    after: str  # ... with the agent's host moved
    diff: str
    purge: bool = False


def plan_move(registry: Registry, name: str, to: str, shared: bool = False,
              purge: bool = False) -> MovePlan:
    """Check the move of ``name`` to ``to`` and make the registry edit (not written yet)."""
    moved = check_target(registry, name, to, shared)
    before = registry.path.read_text(encoding="utf-8")
    after = set_host(registry, before, name, to)
    moved = load_edited(registry, after).get(name)
    return MovePlan(registry=registry, agent=registry.get(name), moved=moved, before=before,
                    after=after, diff=diff(before, after, registry.path), purge=purge)


def load_edited(registry: Registry, text: str) -> Registry:
    """``text`` as a registry read from ``registry``'s path (its relative paths resolve the
    same way)."""
    return parse_registry(text, registry.path)


@contextmanager
def edited_copy(plan: MovePlan) -> Iterator[Registry]:
    """The edited registry as a file beside the registry (0600, removed afterwards): what the
    new server is deployed from before the registry itself changes."""
    path = plan.registry.path.parent / f".{plan.registry.path.name}.move-{plan.agent.name}"
    write_atomic(path, plan.after, mode=0o600)
    try:
        yield load_registry(path)
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def own_run_id() -> Iterator[str]:
    """A fresh run id for one deploy (``deploy_fleet`` takes ``$FLEET_RUN_ID``)."""
    before = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = run_id = new_run_id()
    try:
        yield run_id
    finally:
        if before is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = before


class Nodes:
    """What a move does on the servers (over SSH with the deploy's settings) and by deploys;
    tests give a stand-in."""

    def __init__(self, registry: Registry, echo: Echo) -> None:
        self.registry, self.echo = registry, echo

    def reachable(self, agent: Agent, nodectl: bool) -> None:
        """SSH reaches ``agent``'s host; with ``nodectl``, its fleet-nodectl can hand over."""
        if nodectl:
            state.run_nodectl(agent, self.registry, ["state", "hand-over", "--help"])
            return
        try:
            done = subprocess.run([*ssh_command(agent, self.registry, SSH_TIMEOUT), "true"],
                                  capture_output=True, text=True, timeout=SSH_TIMEOUT + 5,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess([], 255, "", "timed out")
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise MoveError(f"{agent.host} does not answer over SSH: {said}",
                            hint="Check the server, its SSH port and its pinned host key.")

    def deploy(self, registry: Registry, limit: tuple[str, ...]) -> RolloutResult:
        """Deploy ``limit`` (everything when empty) from ``registry``, under a run id of its
        own."""
        with own_run_id():
            return deploy_fleet(registry, RolloutOptions(limit=limit), self.echo)

    def hand_over(self, agent: Agent) -> str:
        """Stop ``agent`` where it runs and snapshot it; the snapshot id."""
        output = state.run_nodectl(agent, self.registry, [
            "state", "hand-over", "--agent", agent.name, "--keep", str(agent.state_snapshots)])
        return str(state.as_json(agent, output)["snapshot"]["id"])

    def carry(self, old: Agent, new: Agent, snapshot: str) -> None:
        """Pull snapshot ``snapshot`` from ``old``'s server, restore it on ``new``'s (which
        starts the agent and checks its health)."""
        with tempfile.TemporaryDirectory(prefix="fleet-move-") as folder:
            taken = state.backup(old, self.registry, Path(folder), snapshot)
            state.restore(new, self.registry, from_file=taken.path)

    def resume(self, agent: Agent) -> None:
        """Start ``agent`` again where it was stopped and check its health."""
        outcome = state.as_json(agent, state.run_nodectl(agent, self.registry, [
            "state", "resume", "--agent", agent.name, "--port", str(agent.gateway_port),
            "--timeout", str(state.HEALTH_TIMEOUT)]))
        if not outcome.get("healthy"):
            raise MoveError(f"{agent.name} started again on {agent.host} but is not healthy: "
                            f"{'; '.join(outcome.get('problems', [])) or '?'}")

    def retire(self, agent: Agent, purge: bool) -> Retired:
        """Remove ``agent``'s service from its server (state kept unless ``purge``)."""
        args = ["state", "retire", "--agent", agent.name, *(["--purge"] if purge else [])]
        return cast(Retired, state.as_json(agent, state.run_nodectl(agent, self.registry,
                                                                    args)))


@dataclass
class Move:
    """One move under way: its plan, its record and what it has done."""

    plan: MovePlan
    nodes: Nodes
    echo: Echo
    run_id: str = field(default_factory=new_run_id)
    steps: list[MoveStep] = field(default_factory=list)

    def note(self, step: str, ok: bool = True, detail: str = "", **extra: Any) -> None:
        """Record one step (and echo it)."""
        entry: MoveStep = {"step": step, "ok": ok, "at": utc_timestamp()}
        if detail:
            entry["detail"] = detail
        self.steps.append(entry)
        self.echo(f"==> move {self.plan.agent.name}: {step}" + (f" ({detail})" if detail
                                                                  else ""))
        self.save(**extra)

    def save(self, **fields: Any) -> None:
        plan = self.plan
        move: MoveRecord = {"agent": plan.agent.name, "from": plan.agent.host,
                            "to": plan.moved.host, "purge": plan.purge, "diff": plan.diff,
                            "steps": self.steps}
        update_run(self.run_id, kind="move", registry=str(plan.registry.path), move=move,
                   **fields)

    def fail(self, message: str, hint: str) -> MoveError:
        self.note("failed", ok=False, detail=message, status="failed",
                  finished=utc_timestamp())
        return MoveError(f"{message} (record: {record_path(self.run_id)})", hint=hint)

    def back_to_old(self, why: str, stopped: bool, new_touched: bool) -> MoveError:
        """Undo a move that failed before the registry changed: the new server's copy
        removed, the old server's agent started again (when it was stopped)."""
        plan = self.plan
        left: list[str] = []
        if new_touched:
            try:
                self.nodes.retire(plan.moved, purge=True)
                self.note(f"removed from {plan.moved.host}")
            except FleetError as exc:
                left.append(f"its copy on {plan.moved.host} is not removed ({exc})")
        if stopped:
            try:
                self.nodes.resume(plan.agent)
                self.note(f"started again on {plan.agent.host}")
            except FleetError as exc:
                return self.fail(
                    f"{plan.agent.name} not moved: {why}; and it could not be started again "
                    f"on {plan.agent.host}: {exc}",
                    hint=f"Start it there: `systemctl start fleet-agent-{plan.agent.name}` "
                         "(its state is untouched), then `fleet status`.")
        extra = f"; {'; '.join(left)}" if left else ""
        return self.fail(f"{plan.agent.name} not moved: {why}; it runs on {plan.agent.host} "
                         f"as before, registry unchanged{extra}",
                         hint="Fix the cause (`fleet status`, the new server's journal), then "
                              "move again.")

    def run(self) -> str:
        """The move's steps (module docstring); the run id."""
        plan, nodes = self.plan, self.nodes
        name, old, new = plan.agent.name, plan.agent, plan.moved
        self.save(status="running", started=utc_timestamp())
        try:
            nodes.reachable(old, nodectl=True)
            nodes.reachable(new, nodectl=False)
        except FleetError as exc:
            raise self.fail(f"{name} not moved, nothing changed: {exc}",
                            hint=exc.hint or "Check both servers with SSH.") from None
        self.note("checked", detail=f"{old.host} -> {new.host}")
        with edited_copy(plan) as edited:
            prepared = nodes.deploy(edited, (name,))
        if not prepared.ok:
            raise self.back_to_old(f"the deploy to {new.host} failed (run {prepared.run_id}: "
                                   f"{reason(prepared, name)})", stopped=False, new_touched=True)
        self.note(f"deployed to {new.host}", detail=f"run {prepared.run_id}")
        try:
            snapshot = nodes.hand_over(old)
        except FleetError as exc:
            raise self.back_to_old(f"the hand-over on {old.host} failed: {exc}", stopped=True,
                                   new_touched=True) from None
        self.note(f"stopped on {old.host}, final snapshot taken", detail=snapshot,
                  snapshot=snapshot)
        try:
            nodes.carry(old, new, snapshot)
        except FleetError as exc:
            raise self.back_to_old(f"its state could not be restored on {new.host}: {exc}",
                                   stopped=True, new_touched=True) from None
        self.note(f"state restored on {new.host}, healthy")
        if plan.registry.path.read_text(encoding="utf-8") != plan.before:
            raise self.back_to_old(f"{plan.registry.path} changed during the move",
                                   stopped=True, new_touched=True)
        write_atomic(plan.registry.path, plan.after,
                     mode=plan.registry.path.stat().st_mode & 0o777)
        self.note(f"registry: {name}.host = {new.host}")
        redeployed = nodes.deploy(load_registry(plan.registry.path), ())
        if not redeployed.ok:
            failed = sorted(host for host, entry in redeployed.hosts.items()
                            if entry.get("status") != "ok")
            raise self.fail(f"{name} runs on {new.host} now, but the redeploy of the registry "
                            f"failed (run {redeployed.run_id}: {', '.join(failed) or '?'}); "
                            f"peers not redeployed still send to {old.host} and retry",
                            hint=f"Fix it and run `fleet deploy`; then remove the old service "
                                 f"on {old.host}: `fleet-nodectl state retire --agent {name}`.")
        self.note("registry copy redeployed, every agent verified",
                  detail=f"run {redeployed.run_id}")
        try:
            retired = nodes.retire(old, plan.purge)
        except FleetError as exc:
            raise self.fail(f"{name} moved to {new.host}, but its old service on {old.host} "
                            f"was not removed: {exc}",
                            hint=f"On {old.host}: `fleet-nodectl state retire --agent {name}`."
                            ) from None
        kept = ", ".join(retired["kept"]) or "nothing"
        self.note(f"old service removed from {old.host}", detail=f"kept: {kept}",
                  status="ok", finished=utc_timestamp())
        return self.run_id


def reason(result: RolloutResult, name: str) -> str:
    """Why ``name`` failed in a deploy, from its record."""
    entry = result.hosts.get(name, {})
    return str(entry.get("reason") or entry.get("status") or result.status)


def move(plan: MovePlan, echo: Echo, nodes: Nodes | None = None) -> str:
    """Carry out ``plan`` (see the module docstring); the move's run id. Raises
    :class:`MoveError` saying where the agent runs."""
    return Move(plan, nodes or Nodes(plan.registry, echo), echo).run()
