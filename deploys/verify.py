"""Phase 8, verify: the agent's units (gateway, runtime) stay up across their stability window
and /health (asked on the node itself, with retries) shows the expected release, config hash
and soul hash, and a runtime that keeps its contract. A failing node is rolled back at once:
``current`` back to the previous release, restart, re-verify (all by ``fleet-nodectl``).
The same command takes the node's deploy lock (a deploy that changes nothing took none
before) and releases it. Its JSON outcome (on the operation's
stdout) is read by the audit phase, which fails the host after recording it."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra import host, state
from pyinfra.api import operation

from deploys import lock
from deploys.context import NODECTL, AgentContext, phase
from deploys.ops import Outcome
from deploys.preflight import Preflight

HEALTH_TIMEOUT_S = 20


@dataclass(frozen=True)
class Check:
    """A host's check, for the audit: the verify (or rollback) operation, whose JSON outcome
    is on its stdout, and the operations of this deploy the audit reports with it."""

    op: Outcome
    env_write: Outcome | None = None  # the keys phase's write of the agent's environment
    service_ops: tuple[Outcome, ...] = ()  # what starts or restarts the agent's services
VERIFY = "Verify: /health shows the expected release, config and soul"


def nodectl_command(nodectl: str, args: list[str], owner: str) -> str:
    """``fleet-nodectl ARGS`` then the lock's release, in one round trip; exits 0 (the JSON on
    stdout is the outcome; none means fleet-nodectl failed)."""
    return f"{shlex.join([nodectl, *args])}; {lock.release_command(owner)}"


def agent_args(ctx: AgentContext) -> list[str]:
    """The arguments naming the agent's unit, port and audit facts for ``fleet-nodectl``."""
    return ["--unit", ctx.unit, "--port", str(ctx.agent.gateway_port),
            "--timeout", str(HEALTH_TIMEOUT_S), "--agent", ctx.name,
            "--login-user", ctx.agent.ssh_user]


@operation(is_idempotent=False)
def agent_verified(nodectl: str, args: list[str], owner: str, stale_owner: str = ""):
    """
    Take the deploy lock for ``owner`` (kept if it holds it already: a deploy that changed
    nothing took none before), check the agent on the node with ``fleet-nodectl verify ARGS``
    (rolling it back if it fails, when ARGS say so), then release the lock; one command, so
    one SSH round trip's worth of waiting. Fails, running nothing, when another deploy holds
    the lock. A check, not a change: at plan time (a dry run) it does nothing.

    + nodectl: path of fleet-nodectl on the node
    + args: its arguments (``verify ...`` or ``rollback ...``)
    + owner: the deploy lock's holder (this deploy)
    + stale_owner: a dead holder found at preflight whose lock may be taken over

    **Example:**

    .. code:: python

        agent_verified(name="Verify", nodectl="/opt/fleet/bin/fleet-nodectl",
                       args=["verify", "--release", "444a224b3f00", "--unit",
                             "fleet-agent-a.service", "--port", "8646"], owner="ctl:42:run")
    """
    if not state.is_executing:
        host.noop(f"fleet-nodectl {args[0]} runs when the deploy runs")
        return
    yield f"{lock.take_command(owner, stale_owner)} && {nodectl_command(nodectl, args, owner)}"


@phase("Verify")
def run(ctx: AgentContext, preflight: Preflight, env_write: Outcome,
        service_ops: Sequence[Outcome]) -> Check:
    """Check health on the node; roll back automatically when it fails (restoring the
    environment too when ``env_write`` changes it). A converged host (nothing to change) is
    only checked: its failure is reported, nothing is rolled back (the deploy changed
    nothing, so a rollback would be a change nobody asked for)."""
    rollback = [] if preflight.converged else ["--rollback"]
    op = ctx.check(agent_verified, VERIFY, nodectl=NODECTL, owner=lock.owner(),
                   stale_owner=preflight.stale_lock, args=[
        "verify", "--release", ctx.release.id, "--config-hash", ctx.config_hash(),
        "--soul-sha", ctx.soul_sha256(), *rollback, *env_args(env_write),
        *runtime_args(ctx), *agent_args(ctx)])
    return Check(op=op, env_write=env_write, service_ops=tuple(service_ops))


def env_args(env_write: Outcome) -> list[str]:
    """``--restore-env`` when this deploy changes the agent's environment: a rollback then
    restores the one it replaced (a wrong secret is undone with the release)."""
    return ["--restore-env"] if env_write.will_change else []


def runtime_args(ctx: AgentContext) -> list[str]:
    """``--runtime-unit UNIT`` for an agent with a runtime (built-in or the operator's own):
    verify then also needs that unit to stay up across its stability window (no restart, by
    ``systemctl show``), the runtime contract kept (a fresh ``runtime.json``, ``ready``) and a
    live model round trip (a wrong key or an unreachable provider fails the deploy)."""
    unit = ctx.agent.runtime_unit
    return ["--runtime-unit", unit] if unit else []
