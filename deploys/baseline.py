"""Phase 2, baseline: the agent's system user, its directories, and sshd without passwords."""

from __future__ import annotations

from deploys.context import (
    NODECTL_CACHE,
    NODECTL_DIR,
    OPT,
    RELEASES,
    SSHD_DROPIN,
    AgentContext,
    phase,
)
from deploys.ops import UPLOAD_DIR, agent_account, directories, managed_file

# sshd takes the first value it reads for a keyword, and Debian's sshd_config includes
# sshd_config.d/*.conf at its top: whatever this drop-in sets wins over the administrator's
# settings. So it sets only what turns password logins off (which can only tighten sshd) and
# nothing else: PermitRootLogin, ports, users stay the administrator's.
SSHD_SETTINGS = """\
# Written by the fleet deploy (baseline phase): keys only, no passwords. Nothing else is
# set here: sshd takes the first value it reads, so this file must never loosen a setting.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
"""
USER = "Agent user and group (system, no login shell)"
DIRECTORIES = "Fleet directories (owners and modes)"
SSHD = "sshd: no password logins (checked, then reloaded)"


Folder = tuple[str, str, str, str]  # (path, user, group, mode), as ``directories`` takes it


def folders(ctx: AgentContext) -> list[Folder]:
    """The fleet's directories on the node with their owners and modes, parents first."""
    specs = [
        (OPT, "root", "root", "755"),
        (RELEASES, "root", "root", "755"),
        (f"{OPT}/bin", "root", "root", "755"),
        (NODECTL_DIR, "root", "root", "755"),
        (NODECTL_CACHE, "root", "root", "755"),  # before the helper's first run: else Python
        # makes it with the umask of that run (000: anyone could swap in code root runs)
        ("/etc/fleet", "root", "root", "755"),
        (ctx.etc_dir, "root", ctx.user, "750"),
        ("/var/lib/fleet", "root", "root", "755"),
        (ctx.state_dir, ctx.user, ctx.user, "700"),
    ]
    if ctx.registry.become:  # the sudo user's private upload folder (deploys/ops.upload_temp)
        specs.append((UPLOAD_DIR, ctx.agent.ssh_user, "root", "700"))
    return specs


def release_folders(ctx: AgentContext) -> list[Folder]:
    """Of :func:`folders`, the ones a release upload needs (``deploys.release.prestage``, on a
    node baseline has not set up yet): the releases folder, and the upload folder with sudo.
    None of them is owned by the agent's user, which baseline creates later."""
    needed = {OPT, RELEASES, *(("/var/lib/fleet", UPLOAD_DIR) if ctx.registry.become else ())}
    return [spec for spec in folders(ctx) if spec[0] in needed]


@phase("Baseline")
def run(ctx: AgentContext) -> None:
    """User (no login shell), /opt/fleet, /etc/fleet/<agent>, state dir, sshd settings."""
    ctx.plan(agent_account, USER, user=ctx.user, home=ctx.state_dir, node=ctx.node)
    ctx.plan(directories, DIRECTORIES, node=ctx.node, specs=folders(ctx))
    ctx.plan(managed_file, SSHD, dest=SSHD_DROPIN, content=SSHD_SETTINGS, user="root", group="root",
             mode="644", node=ctx.node, diffs=ctx.diffs(),
             then=["sshd -t", "systemctl reload ssh.service"])
