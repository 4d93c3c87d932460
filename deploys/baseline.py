"""Phase 2, baseline: the agent's system user, its directories, and sshd without passwords."""

from __future__ import annotations

from io import StringIO

from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from deploys.context import OPT, RELEASES, AgentContext

SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-fleet.conf"
SSHD_SETTINGS = """\
# Written by the fleet deploy (baseline phase): keys only, no passwords.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
PermitRootLogin prohibit-password
"""


@deploy("Baseline")
def run(ctx: AgentContext) -> None:
    """User (no login shell), /opt/fleet, /etc/fleet/<agent>, state dir, sshd settings."""
    server.group(name=f"Agent group {ctx.user}", group=ctx.user, system=True)
    server.user(
        name=f"Agent user {ctx.user}",
        user=ctx.user,
        group=ctx.user,
        system=True,
        shell="/usr/sbin/nologin",
        home=ctx.state_dir,
        create_home=False,
    )
    for path, user, group, mode in (
        (OPT, "root", "root", "755"),
        (RELEASES, "root", "root", "755"),
        (f"{OPT}/bin", "root", "root", "755"),
        ("/etc/fleet", "root", "root", "755"),
        (ctx.etc_dir, "root", ctx.user, "750"),
        ("/var/lib/fleet", "root", "root", "755"),
        (ctx.state_dir, ctx.user, ctx.user, "700"),
    ):
        files.directory(name=f"Directory {path}", path=path, user=user, group=group, mode=mode)
    sshd = files.put(
        name="sshd: no password logins",
        src=StringIO(SSHD_SETTINGS),
        dest=SSHD_DROPIN,
        user="root",
        group="root",
        mode="644",
    )
    server.shell(name="sshd: check the configuration", commands=["sshd -t"],
                 _if=sshd.did_change)
    systemd.service(name="sshd: reload", service="ssh.service", reloaded=True,
                    _if=sshd.did_change)
