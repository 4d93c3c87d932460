"""Phase 5, keys: the service environment (with secrets, masked in all output; the one it
replaces kept for a rollback) and operators' SSH public keys (added to the login user's
authorized_keys, never replacing existing ones)."""

from __future__ import annotations

from pyinfra.api import HiddenValue

from deploys.context import AgentContext, phase
from deploys.ops import Outcome, authorized_keys_added, secret_file
from fleet.control import render

ENV = "Agent environment (secrets masked)"
OPERATOR_KEYS = "Operator SSH keys of the login user"


@phase("Keys")
def run(ctx: AgentContext) -> Outcome:
    """``/etc/fleet/<agent>/env`` (root's, 0600: systemd reads it as root for the agent's
    units; nothing running as the agent reads the file) and ``authorized_keys`` additions.
    The environment it replaces is kept as ``env.previous``, which a rollback restores.
    Returns the environment's write (its change restarts the agent; verify and the audit
    read it)."""
    env_write = ctx.plan(secret_file, ENV, dest=ctx.env_path, content=HiddenValue(ctx.env_file()),
                         public=tuple(ctx.public_env()), user="root", group="root", node=ctx.node,
                         diffs=ctx.diffs(), backup=ctx.env_previous_path)
    if ctx.agent.authorized_keys:
        ctx.plan(authorized_keys_added, OPERATOR_KEYS, keys_file=ctx.login_keys_file,
                 keys=render.authorized_keys(ctx.agent.authorized_keys), node=ctx.node)
    return env_write
