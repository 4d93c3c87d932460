"""Phase 5, keys: the service environment (with secrets, masked in all output) and operators'
SSH public keys (added to the login user's authorized_keys, never replacing existing ones)."""

from __future__ import annotations

from pyinfra.api.hiddenvalue import HiddenValue

from deploys import webhook
from deploys.context import AgentContext, phase
from deploys.ops import authorized_keys_added, secret_file


@phase("Keys")
def run(ctx: AgentContext) -> None:
    """``/etc/fleet/<agent>/env`` (0600, agent user) and ``authorized_keys`` additions."""
    ctx.restart_triggers.append(secret_file(
        name=f"Environment of {ctx.name} (secrets masked)", dest=f"{ctx.etc_dir}/env",
        content=HiddenValue(ctx.env_file()), public=tuple(ctx.public_env()), user=ctx.user,
        group=ctx.user, node=ctx.node))
    if ctx.agent.authorized_keys:
        authorized_keys_added(
            name=f"Operator keys for {ctx.agent.ssh_user}", keys_file=ctx.login_keys_file,
            keys=list(ctx.agent.authorized_keys), node=ctx.node)
    webhook.keys(ctx)
