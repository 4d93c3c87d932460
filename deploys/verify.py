"""Phase 7, verify: the unit is active and /health (asked on the node itself, with retries)
shows the expected release, config hash and soul hash. A failing node is rolled back at once:
``current`` back to the previous release, restart, re-verify (all by ``fleet-nodectl``).
The outcome is kept for the audit phase, which fails the host after recording it."""

from __future__ import annotations

import json
from typing import Any

from pyinfra.api import State, StringCommand, deploy
from pyinfra.api.host import Host
from pyinfra.operations import python

from deploys.context import NODECTL, AgentContext

HEALTH_TIMEOUT_S = 20


def verify_node(state: State, host: Host, ctx: AgentContext) -> bool:
    """Run ``fleet-nodectl verify --rollback`` on the node; store the result on ``ctx``."""
    command = StringCommand(
        NODECTL, "verify", "--unit", ctx.unit, "--port", str(ctx.agent.gateway_port),
        "--release", ctx.release.id, "--config-hash", ctx.config_hash(),
        "--soul-sha", ctx.soul_sha256(), "--timeout", str(HEALTH_TIMEOUT_S), "--rollback")
    ok, output = host.run_shell_command(command)
    result: dict[str, Any]
    try:
        result = json.loads(output.stdout) if ok else {}
    except ValueError:
        result = {}
    if not result:
        result = {"ok": False, "problems": [f"fleet-nodectl verify failed: {output.stderr}"]}
    ctx.verify_result = result
    return True


@deploy("Verify")
def run(ctx: AgentContext) -> None:
    """Check health on the node; roll back automatically when it fails."""
    ctx.check_ops.append(python.call(
        name=f"Verify {ctx.name}: /health shows release {ctx.release.id}, config and soul",
        function=verify_node, ctx=ctx))
