"""Phase 7, webhook: the deploy webhook receiver on the agent with the ``webhook-receiver``
capability, after the agent's services and before verify (which releases the deploy lock); a
no-op on every other host. In order:

- its account: ``git`` (apt), the ``fleet-webhook`` system user, ``/etc/fleet/webhook`` and the
  state dir ``/var/lib/fleet/webhook`` (also its home and build cache);
- its settings: ``webhook.env`` (0600: the receiver's secrets, ``FLEET_REPO_URL`` from the
  registry's ``fleet.repo_url``), the secrets its deploys use, and ``FLEET_DEPLOY_SSH_KEY`` as
  the private key they reach the fleet with (named in the user's ``~/.ssh/config``, which ssh,
  git and pyinfra read). The secrets its deploys use: when the registry names a sealed file
  (``fleet.secrets``), that file of the commit each deploy checks out, opened in memory with the
  receiver's age identity (``FLEET_AGE_IDENTITY``; a plaintext copy an earlier deploy left is
  removed); otherwise a plaintext copy of the controller's secrets file (the operator's bus key
  as its public half only: :meth:`fleet.control.secrets.Secrets.receiver_copy`);
- its service: the receiver's code (a release ships only what a node runs: see
  :func:`fleet.control.release.build_receiver_code`) unpacked beside this deploy's release
  site, the deploy tools (pyinfra, see :func:`fleet.control.release.build_deploy_tools`), the
  receiver's release build cache seeded from the node's release and tools, the unit
  ``fleet-webhook.service`` from ``fleet/webhook/fleet-webhook.service`` running
  ``fleet webhook serve`` (gunicorn and the deploy dispatcher) of that code, enabled and
  started; restarted when its release, tools, unit or env changed (after the run, when the
  receiver is deploying its own node: :func:`restart_command`);
- its age identity: ``age-identity.txt`` (0600, the receiver's user) generated on the node by
  the deploy tools' pyrage when absent, never replaced, its private key never leaving the node;
  its public recipient in a ``# public key:`` line and in ``age-recipient.txt`` (0644), which
  ``fleet secrets init --receiver`` prints for the operator to add as a recipient.

Without the receiver's secrets (or ``fleet.repo_url``) nothing is installed and the deploy
says why; the deploy does not fail. The host reads one snapshot of the receiver's paths and
unit (``NodeState``), apart from the agent's.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import HiddenValue
from pyinfra.operations import apt, server

from deploys.context import OPT, RELEASES, AgentContext, phase
from deploys.facts import NodeState, empty_snapshot
from deploys.ops import (
    Node,
    Outcome,
    agent_account,
    agent_service,
    deps_seeded,
    directories,
    managed_file,
    release_unpacked,
    secret_file,
    tree_unpacked,
)
from fleet.control import render
from fleet.control.release import (
    DEPLOY_TOOL_REQUIREMENTS,
    SHIPPED_PACKAGES,
    build_deploy_tools,
    build_receiver_code,
    deps_key,
)
from fleet.control.sealed import IDENTITY_ENV, RECEIVER_IDENTITY, RECEIVER_RECIPIENT
from fleet.control.secrets import DEPLOY_SSH_KEY, SECRETS_ENV
from fleet.core.errors import WebhookError
from fleet.core.release_marker import BROKEN_MARKER, RELEASE_FILE

CAPABILITY = "webhook-receiver"
USER = "fleet-webhook"
NAME = "webhook"  # of its directories under /etc/fleet and /var/lib/fleet
ETC_DIR = f"/etc/fleet/{NAME}"
STATE_DIR = f"/var/lib/fleet/{NAME}"
TOOLS_DIR = f"{OPT}/tools"
DEPS_CACHE = f"{STATE_DIR}/release/deps"  # FLEET_CACHE_DIR is the state dir
LOCK_FILE = f"{STATE_DIR}/deploy.lock"  # fleet.webhook.lock: held while the receiver deploys
ENV_FILE = f"{ETC_DIR}/webhook.env"
SECRETS_COPY = f"{ETC_DIR}/secrets.yaml"
KEY_FILE = f"{ETC_DIR}/deploy_key"
IDENTITY_FILE = RECEIVER_IDENTITY  # the receiver's age identity (made on the node)
RECIPIENT_FILE = RECEIVER_RECIPIENT  # its public recipient (0644)
SSH_DIR = f"{STATE_DIR}/.ssh"  # the user's home is the state dir
SSH_CONFIG = f"{SSH_DIR}/config"
UNIT = "fleet-webhook.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
PORT = 9876
PYTHON = "/usr/bin/python3"
# operation names (pyinfra shares one per operation across hosts: no host-specific part)
GIT = "git for the webhook receiver (fetches the fleet repository)"
ACCOUNT = f"Webhook user {USER} (system, no login shell)"
DIRECTORIES = "Webhook receiver directories (owners and modes)"
ENV = f"Environment of the webhook receiver {ENV_FILE} (secrets masked)"
SECRETS = f"Secrets file of the receiver's deploys {SECRETS_COPY} (not shown)"
KEY = f"SSH key of the receiver's deploys {KEY_FILE} (not shown)"
SSH = f"SSH config of the receiver's deploys {SSH_CONFIG} (their key)"
COPY_REMOVED = (f"Plaintext secrets copy {SECRETS_COPY} removed (the receiver's deploys open "
                "the sealed file)")
IDENTITY = (f"Age identity of the receiver {IDENTITY_FILE} (made on the node when absent; "
            f"recipient in {RECIPIENT_FILE})")
CODE = "Webhook receiver code (the controller's, beside the release)"
TOOLS = "Deploy tools (pyinfra) for the webhook receiver"
CACHE = "Release build cache of the receiver's deploys (no package index needed)"
UNIT_FILE = f"Unit {UNIT}"
SERVICE = f"{UNIT} enabled, running, restarted if its release, tools, unit or env changed"
TEMPLATE = Path(__file__).resolve().parent.parent / "fleet" / "webhook" / "fleet-webhook.service"


@dataclass
class Receiver:
    """The receiver's plan on one host: why it is skipped (if it is) and its node snapshot."""

    problem: str | None
    node: Node = field(default_factory=empty_snapshot)


_receivers: dict[str, Receiver] = {}


def public_env(ctx: AgentContext) -> dict[str, str]:
    """The receiver's non-secret settings (``webhook.env``); its deploys run
    ``python3 -m fleet deploy``, with the sealed file of their checkout and the receiver's age
    identity when the registry names a sealed file, else with the plaintext copy."""
    secrets = ({IDENTITY_ENV: IDENTITY_FILE} if sealed(ctx)
               else {SECRETS_ENV: SECRETS_COPY})
    return {
        "FLEET_STATE_DIR": STATE_DIR,
        "FLEET_REPO_URL": ctx.registry.repo_url or "",
        **secrets,
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def sealed(ctx: AgentContext) -> bool:
    """Whether the registry names a sealed secrets file (``fleet.secrets``): the receiver's
    deploys then open the one of their checkout, and no plaintext copy is kept."""
    return ctx.registry.secrets is not None


def ssh_config() -> str:
    """``~/.ssh/config`` of the receiver's user: its deploy key for every host (git, ssh and
    pyinfra's SSH connector read it)."""
    return f"Host *\n    IdentityFile {KEY_FILE}\n    IdentitiesOnly yes\n"


def receiver_env(ctx: AgentContext) -> dict[str, str]:
    """Everything in ``webhook.env``: public settings, then the receiver's secrets."""
    own = ctx.secrets.for_receiver(ctx.name)
    own.pop(DEPLOY_SSH_KEY, None)
    return {**public_env(ctx), **own}


def deploy_key(ctx: AgentContext) -> str:
    """``FLEET_DEPLOY_SSH_KEY`` for this agent ('' when not set), newline-terminated."""
    key = ctx.secrets.for_receiver(ctx.name).get(DEPLOY_SSH_KEY, "").strip()
    return f"{key}\n" if key else ""


def problem(ctx: AgentContext) -> str | None:
    """Why the receiver cannot be installed on this agent's node (``None``: it can)."""
    if NAME in ctx.registry.agents:
        return (f"agent name {NAME!r} is taken by the receiver's directories "
                f"({ETC_DIR}, {STATE_DIR}); rename that agent")
    if not ctx.registry.repo_url:
        return ("fleet.repo_url is not set in the registry; set it to the fleet repository "
                "the receiver deploys from")
    # imported only now: the fleet.webhook package imports Flask (~0.2 s of every deploy's
    # planning on the receiver's host when there is no receiver to plan)
    from fleet.webhook.checkout import check_repo_url
    from fleet.webhook.config import load_settings

    env = receiver_env(ctx)
    try:
        check_repo_url(env["FLEET_REPO_URL"])
    except WebhookError as exc:
        return f"{exc}; fix fleet.repo_url in the registry"
    try:
        load_settings(env)
    except WebhookError as exc:
        where = ctx.secrets.path or "the secrets file ($FLEET_SECRETS is not set)"
        return f"{exc}; add it under fleet: or agents.{ctx.name}: in {where}"
    for name, value in env.items():
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            return (f"{name} contains a control character (newline, tab, ...); "
                    f"{ENV_FILE} holds one KEY=value per line")
    return None


def code_dir(ctx: AgentContext) -> str:
    """Where the receiver's code is unpacked: in this deploy's release folder, so pruning the
    release removes it, under its own id (``receiver-<hash>``), so a change to the receiver's
    code alone (which does not change the release id) is unpacked and restarts it."""
    return f"{RELEASES}/{ctx.release.id}/{build_receiver_code().id}"


def receiver(ctx: AgentContext) -> Receiver | None:
    """The host's receiver plan, made once (and the skip reason logged once); ``None`` when the
    agent has no ``webhook-receiver`` capability or the receiver is skipped."""
    if CAPABILITY not in ctx.agent.capabilities:
        return None
    if ctx.name not in _receivers:
        reason = problem(ctx)
        plan = Receiver(problem=reason)
        if reason:
            host.log_styled(f"webhook receiver not installed (the deploy goes on): {reason}",
                            fg="yellow", log_func=logger.warning)
        else:
            plan.node = host.get_fact(
                NodeState, paths=[ETC_DIR, STATE_DIR, SSH_DIR, TOOLS_DIR, ENV_FILE, SECRETS_COPY,
                                  KEY_FILE, SSH_CONFIG, UNIT_PATH, IDENTITY_FILE,
                                  RECIPIENT_FILE, code_dir(ctx),
                                  *(f"{DEPS_CACHE}/{key}/.complete" for key in deps_keys())],
                user=USER, unit=UNIT, current=f"{TOOLS_DIR}/current", releases_dir=TOOLS_DIR,
                keys_file="/dev/null")
        _receivers[ctx.name] = plan
    plan = _receivers[ctx.name]
    return None if plan.problem else plan


def deps_keys() -> tuple[str, str]:
    """Keys of the release's and the deploy tools' dependency trees (as the node computes
    them: the same pins)."""
    return deps_key(), deps_key(DEPLOY_TOOL_REQUIREMENTS)


def restart_command() -> str:
    """Restart the receiver now when it is idle; while it runs a deploy (this one, when the
    receiver deploys its own node) a transient unit restarts it once the deploy lock is free,
    so the run is recorded before its receiver goes. Never creates the lock file."""
    lock, unit = shlex.quote(LOCK_FILE), shlex.quote(UNIT)
    return (f"if [ ! -e {lock} ] || flock -n {lock} true; then systemctl restart {unit}; "
            f"else systemd-run --no-block --collect --quiet flock {lock} "
            f"systemctl restart {unit}; fi")


def unit_text(ctx: AgentContext, tools_id: str) -> str:
    """The receiver's unit: its code, then this deploy's release site and the deploy tools on
    ``PYTHONPATH``."""
    pythonpath = f"{code_dir(ctx)}:{RELEASES}/{ctx.release.id}/site:{TOOLS_DIR}/{tools_id}/site"
    return render.unit_file(
        TEMPLATE.read_text(encoding="utf-8"), python=PYTHON, pythonpath=pythonpath,
        user_name=USER, etc_dir=ETC_DIR, state_dir=STATE_DIR, cache_dir=STATE_DIR, port=PORT)


@phase("Webhook")
def run(ctx: AgentContext) -> None:
    """The receiver's account, settings and service; its service restarts when its
    environment changed (or its release, tools or unit)."""
    plan = receiver(ctx)
    if plan is None:
        return
    account(ctx, plan)
    env = settings(ctx, plan)
    tools_id = service(ctx, plan, triggers=[env])
    identity(ctx, plan, tools_id)


def account(ctx: AgentContext, plan: Receiver) -> None:
    """git, the receiver's user and directories."""
    ctx.plan(apt.packages, GIT, packages=["git"])
    ctx.plan(agent_account, ACCOUNT, user=USER, home=STATE_DIR, node=plan.node)
    ctx.plan(directories, DIRECTORIES, node=plan.node, specs=[
        (ETC_DIR, "root", USER, "750"),
        (STATE_DIR, USER, USER, "700"),
        (SSH_DIR, USER, USER, "700"),
        (TOOLS_DIR, "root", "root", "755"),
    ])


def settings(ctx: AgentContext, plan: Receiver) -> Outcome:
    """``webhook.env``, the secrets file copy (none with a sealed file: one left is removed)
    and the deploy SSH key (all 0600, masked); returns the operation writing
    ``webhook.env``."""
    env = ctx.plan(secret_file, ENV, dest=ENV_FILE,
                   content=HiddenValue(render.env_file(receiver_env(ctx))),
                   public=tuple(public_env(ctx)), user=USER, group=USER, node=plan.node,
                   diffs=ctx.diffs())
    if sealed(ctx):
        if plan.node["paths"].get(SECRETS_COPY) is not None:
            ctx.plan(server.shell, COPY_REMOVED, commands=[f"rm -f {shlex.quote(SECRETS_COPY)}"])
    elif ctx.secrets.path is not None:  # the operator's bus key as its public half only
        ctx.plan(secret_file, SECRETS, dest=SECRETS_COPY,
                 content=HiddenValue(ctx.secrets.receiver_copy()), public=None, user=USER,
                 group=USER, node=plan.node, diffs=ctx.diffs())
    key = deploy_key(ctx)
    if key:
        ctx.plan(secret_file, KEY, dest=KEY_FILE, content=HiddenValue(key), public=None, user=USER,
                 group=USER, node=plan.node, diffs=ctx.diffs())
        ctx.plan(managed_file, SSH, dest=SSH_CONFIG, content=ssh_config(), user=USER, group=USER,
                 mode="600", node=plan.node, diffs=ctx.diffs())
    return env


def service(ctx: AgentContext, plan: Receiver, triggers: list[Outcome]) -> str:
    """Receiver code, deploy tools, the unit, and the service enabled, running and restarted
    when the unit or one of ``triggers`` changed; returns the deploy tools' id."""
    code = build_receiver_code()
    ctx.plan(tree_unpacked, CODE, dest=code_dir(ctx), tarball=str(code.path), node=plan.node)
    tools = build_deploy_tools()
    ctx.plan(release_unpacked, TOOLS, release_id=tools.id, tarball=str(tools.path),
             releases_dir=TOOLS_DIR, node=plan.node)
    release_deps, tools_deps = deps_keys()
    ctx.plan(deps_seeded, CACHE, cache=DEPS_CACHE, user=USER, node=plan.node,
             trees=[(release_deps, f"{RELEASES}/{ctx.release.id}/site"),
                    (tools_deps, f"{TOOLS_DIR}/{tools.id}/site")],
             leave_out=[*SHIPPED_PACKAGES, RELEASE_FILE, BROKEN_MARKER])
    unit = ctx.plan(managed_file, UNIT_FILE, dest=UNIT_PATH, content=unit_text(ctx, tools.id),
                    user="root", group="root", mode="644", node=plan.node, diffs=ctx.diffs())
    ctx.plan(agent_service, SERVICE, unit=UNIT, node=plan.node, unit_file=unit, triggers=triggers,
             restart=restart_command())
    return tools.id


IDENTITY_SCRIPT = """\
import os, sys
from pyrage import x25519
secret, recipient = sys.argv[1:3]
if os.path.exists(secret):
    lines = [line.strip() for line in open(secret, encoding="utf-8")]
    key = x25519.Identity.from_str(next(line for line in lines if line.startswith("AGE-")))
else:
    key = x25519.Identity.generate()
    staged = secret + ".new"
    with open(staged, "w", encoding="utf-8") as out:  # created 0600 by install(1) before
        out.write(f"# public key: {key.to_public()}\\n{key}\\n")
        out.flush()
        os.fsync(out.fileno())
    os.rename(staged, secret)
staged = recipient + ".new"
with open(staged, "w", encoding="utf-8") as out:
    out.write(f"{key.to_public()}\\n")
os.chmod(staged, 0o644)
os.rename(staged, recipient)
"""
"""Run on the node by the deploy tools' Python: the identity (when absent) and its recipient.
The private key is written to a file made 0600 first and printed nowhere."""


def identity_command(tools_id: str) -> str:
    """The shell command making the receiver's age identity (when absent) and its recipient
    file on the node, with the deploy tools' pyrage."""
    staged = shlex.quote(f"{IDENTITY_FILE}.new")
    site = shlex.quote(f"{TOOLS_DIR}/{tools_id}/site")
    return (f"{{ [ -e {shlex.quote(IDENTITY_FILE)} ] || "
            f"install -m 600 -o {USER} -g {USER} /dev/null {staged}; }} && "
            f"PYTHONPATH={site} {PYTHON} -c {shlex.quote(IDENTITY_SCRIPT)} "
            f"{shlex.quote(IDENTITY_FILE)} {shlex.quote(RECIPIENT_FILE)}")


def identity(ctx: AgentContext, plan: Receiver, tools_id: str) -> None:
    """The receiver's age identity, made on its node when absent (the private key never leaves
    it), and its public recipient file; no operation when both are there."""
    paths = plan.node["paths"]
    if paths.get(IDENTITY_FILE) is None or paths.get(RECIPIENT_FILE) is None:
        ctx.plan(server.shell, IDENTITY, commands=[identity_command(tools_id)])

