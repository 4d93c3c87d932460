"""Phase 5, keys: the service environment (with secrets, masked in all output) and operators'
SSH public keys (added to the login user's authorized_keys, never replacing existing ones)."""

from __future__ import annotations

from pyinfra.api import HiddenValue

from deploys import webhook
from deploys.context import AgentContext, phase
from deploys.ops import authorized_keys_added, secret_file

ENV = "Agent environment (secrets masked)"
OPERATOR_KEYS = "Operator SSH keys of the login user"


@phase("Keys")
def run(ctx: AgentContext) -> None:
    """``/etc/fleet/<agent>/env`` (0600, agent user) and ``authorized_keys`` additions."""
    ctx.restart_triggers.append(ctx.track(ENV, secret_file(
        name=ENV, dest=f"{ctx.etc_dir}/env", content=HiddenValue(ctx.env_file()),
        public=tuple(ctx.public_env()), user=ctx.user, group=ctx.user, node=ctx.node)))
    if ctx.agent.authorized_keys:
        ctx.track(OPERATOR_KEYS, authorized_keys_added(
            name=OPERATOR_KEYS, keys_file=ctx.login_keys_file,
            keys=list(ctx.agent.authorized_keys), node=ctx.node))
    webhook.keys(ctx)
