"""Phase 7, verify: the unit is active and /health (asked on the node itself, with retries)
shows the expected release, config hash and soul hash. A failing node is rolled back at once:
``current`` back to the previous release, restart, re-verify (all by ``fleet-nodectl``).
The outcome is kept for the audit phase, which fails the host after recording it."""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import State, StringCommand
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import LOCK_DIR, NODECTL, AgentContext, lock_owner, phase

HEALTH_TIMEOUT_S = 20


def verify_node(state: State, host: Host, ctx: AgentContext) -> bool:
    """Run ``fleet-nodectl verify --rollback`` on the node; store the result on ``ctx``."""
    ctx.verify_result = run_nodectl(host, ctx, [
        "verify", "--release", ctx.release.id, "--config-hash", ctx.config_hash(),
        "--soul-sha", ctx.soul_sha256(), "--rollback"])
    return True


def run_nodectl(host: Host, ctx: AgentContext, args: list[str]) -> dict[str, Any]:
    """One ``fleet-nodectl`` call that checks the agent, collects the audit facts and releases
    the deploy lock (a single round trip); its JSON result."""
    command = StringCommand(
        NODECTL, *args, "--unit", ctx.unit, "--port", str(ctx.agent.gateway_port),
        "--timeout", str(HEALTH_TIMEOUT_S), "--agent", ctx.name,
        "--login-user", ctx.agent.ssh_user, "--unlock", LOCK_DIR, lock_owner())
    ok, output = host.run_shell_command(command)
    try:
        result: dict[str, Any] = json.loads(output.stdout) if ok else {}
    except ValueError:
        result = {}
    return result or {"ok": False, "problems": [
        f"fleet-nodectl {args[0]} failed: {output.stderr.strip() or 'no output'}"]}


@phase("Verify")
def run(ctx: AgentContext) -> None:
    """Check health on the node; roll back automatically when it fails."""
    ctx.check_ops.append(python.call(
        name=f"Verify {ctx.name}: /health shows release {ctx.release.id}, config and soul",
        function=verify_node, ctx=ctx))
