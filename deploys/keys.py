"""Phase 5, keys: the service environment (with secrets, masked in all output; the one it
replaces kept for a rollback) and operators' SSH public keys (added to the login user's
authorized_keys, never replacing existing ones)."""

from __future__ import annotations

from pyinfra.api import HiddenValue

from deploys.context import AgentContext, phase
from deploys.ops import authorized_keys_added, secret_file
from fleet.control import render

ENV = "Agent environment (secrets masked)"
OPERATOR_KEYS = "Operator SSH keys of the login user"


@phase("Keys")
def run(ctx: AgentContext) -> None:
    """``/etc/fleet/<agent>/env`` (root's, 0600: systemd reads it as root for the agent's
    units; nothing running as the agent reads the file) and ``authorized_keys`` additions.
    The environment it replaces is kept as ``env.previous``, which a rollback restores."""
    ctx.env_write = ctx.track(ENV, secret_file(
        name=ENV, dest=ctx.env_path, content=HiddenValue(ctx.env_file()),
        public=tuple(ctx.public_env()), user="root", group="root", node=ctx.node,
        backup=ctx.env_previous_path))
    ctx.restart_triggers.append(ctx.env_write)
    if ctx.agent.authorized_keys:
        ctx.track(OPERATOR_KEYS, authorized_keys_added(
            name=OPERATOR_KEYS, keys_file=ctx.login_keys_file,
            keys=render.authorized_keys(ctx.agent.authorized_keys), node=ctx.node))
