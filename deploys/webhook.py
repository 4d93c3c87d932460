"""The deploy webhook receiver on the agent with the ``webhook-receiver`` capability.

Called from three phases, and a no-op on every other host:

- baseline: ``git`` (apt), the ``fleet-webhook`` system user, ``/etc/fleet/webhook`` and the
  state dir ``/var/lib/fleet/webhook`` (also its home and build cache);
- keys: ``webhook.env`` (0600: the receiver's secrets, ``FLEET_REPO_URL`` from the registry's
  ``fleet.repo_url``), a copy of the secrets file its deploys use, and ``FLEET_DEPLOY_SSH_KEY``
  as the private key they reach the fleet with;
- services: the deploy tools (pyinfra, see :func:`fleet.release.build_deploy_tools`), the
  receiver's release build cache seeded from the node's release and tools, the unit
  ``fleet-webhook.service`` from ``fleet/webhook/fleet-webhook.service`` running the current
  release, enabled and started; restarted when its release, tools, unit or env changed (after
  the run, when the receiver is deploying its own node: :func:`restart_command`).

Without the receiver's secrets (or ``fleet.repo_url``) nothing is installed and the deploy
says why; the deploy does not fail. The host reads one snapshot of the receiver's paths and
unit (``NodeState``), apart from the agent's.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Template
from pyinfra import host, logger
from pyinfra.api.hiddenvalue import HiddenValue
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import apt

from deploys.context import OPT, RELEASES, AgentContext, secrets
from deploys.facts import NodeState
from deploys.ops import (
    Node,
    agent_account,
    agent_service,
    deps_seeded,
    directories,
    managed_file,
    release_unpacked,
    secret_file,
)
from fleet.errors import WebhookError
from fleet.release import (
    BROKEN_MARKER,
    DEPLOY_TOOL_REQUIREMENTS,
    RELEASE_FILE,
    SHIPPED_PACKAGES,
    build_deploy_tools,
    deps_key,
)
from fleet.secrets import DEPLOY_SSH_KEY

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
UNIT = "fleet-webhook.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
PORT = 9876
PYTHON = "/usr/bin/python3"
TEMPLATE = Path(__file__).resolve().parent.parent / "fleet" / "webhook" / "fleet-webhook.service"


@dataclass
class Receiver:
    """The receiver's plan on one host: why it is skipped (if it is), its node snapshot and
    the operation writing its environment (a restart trigger)."""

    problem: str | None
    node: Node = field(default_factory=dict)
    triggers: list[OperationMeta] = field(default_factory=list)


_receivers: dict[str, Receiver] = {}


def public_env(ctx: AgentContext) -> dict[str, str]:
    """The receiver's non-secret settings (``webhook.env``)."""
    data = f" --data ssh_key={KEY_FILE}" if deploy_key(ctx) else ""
    env = {
        "FLEET_STATE_DIR": STATE_DIR,
        "FLEET_REPO_URL": ctx.registry.repo_url or "",
        "FLEET_SECRETS": SECRETS_COPY,
        "FLEET_DEPLOY_COMMAND": f"python3 -m pyinfra -y --json{data} inventory.py deploy.py",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if data:
        env["GIT_SSH_COMMAND"] = f"ssh -i {KEY_FILE} -o IdentitiesOnly=yes"
    return env


def receiver_env(ctx: AgentContext) -> dict[str, str]:
    """Everything in ``webhook.env``: public settings, then the receiver's secrets."""
    own = secrets().for_receiver(ctx.name)
    own.pop(DEPLOY_SSH_KEY, None)
    return {**public_env(ctx), **own}


def deploy_key(ctx: AgentContext) -> str:
    """``FLEET_DEPLOY_SSH_KEY`` for this agent ('' when not set), newline-terminated."""
    key = secrets().for_receiver(ctx.name).get(DEPLOY_SSH_KEY, "").strip()
    return f"{key}\n" if key else ""


def problem(ctx: AgentContext) -> str | None:
    """Why the receiver cannot be installed on this agent's node (``None``: it can)."""
    from fleet.webhook.config import load_settings

    if NAME in ctx.registry.agents:
        return (f"agent name {NAME!r} is taken by the receiver's directories "
                f"({ETC_DIR}, {STATE_DIR}); rename that agent")
    if not ctx.registry.repo_url:
        return ("fleet.repo_url is not set in the registry; set it to the fleet repository "
                "the receiver deploys from")
    try:
        load_settings(receiver_env(ctx))
    except WebhookError as exc:
        where = secrets().path or "the secrets file ($FLEET_SECRETS is not set)"
        return f"{exc}; add it under fleet: or agents.{ctx.name}: in {where}"
    return None


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
                NodeState, paths=[ETC_DIR, STATE_DIR, TOOLS_DIR, ENV_FILE, SECRETS_COPY,
                                  KEY_FILE, UNIT_PATH, *(f"{DEPS_CACHE}/{key}/.complete"
                                                         for key in deps_keys())],
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
    """The receiver's unit: this deploy's release and deploy tools on ``PYTHONPATH``."""
    template = Template(TEMPLATE.read_text(encoding="utf-8"), keep_trailing_newline=True)
    return template.render(
        python=PYTHON, pythonpath=f"{RELEASES}/{ctx.release.id}/site:{TOOLS_DIR}/{tools_id}/site",
        user_name=USER, etc_dir=ETC_DIR, state_dir=STATE_DIR, cache_dir=STATE_DIR, port=PORT)


def baseline(ctx: AgentContext) -> None:
    """git, the receiver's user and directories."""
    plan = receiver(ctx)
    if plan is None:
        return
    apt.packages(name="git for the webhook receiver (fetches the fleet repository)",
                 packages=["git"])
    agent_account(name=f"Webhook user {USER} (system, no login shell)", user=USER,
                  home=STATE_DIR, node=plan.node)
    directories(name="Webhook receiver directories (owners and modes)", node=plan.node, specs=[
        (ETC_DIR, "root", USER, "750"),
        (STATE_DIR, USER, USER, "700"),
        (TOOLS_DIR, "root", "root", "755"),
    ])


def keys(ctx: AgentContext) -> None:
    """``webhook.env``, the secrets file copy and the deploy SSH key (all 0600, masked)."""
    plan = receiver(ctx)
    if plan is None:
        return
    env = receiver_env(ctx)
    plan.triggers.append(secret_file(
        name=f"Environment of the webhook receiver {ENV_FILE} (secrets masked)", dest=ENV_FILE,
        content=HiddenValue("".join(f"{key}={value}\n" for key, value in env.items())),
        public=tuple(public_env(ctx)), user=USER, group=USER, node=plan.node))
    source = secrets().path
    if source is not None:
        secret_file(name=f"Secrets file of the receiver's deploys {SECRETS_COPY} (not shown)",
                    dest=SECRETS_COPY, content=HiddenValue(source.read_text(encoding="utf-8")),
                    public=None, user=USER, group=USER, node=plan.node)
    key = deploy_key(ctx)
    if key:
        secret_file(name=f"SSH key of the receiver's deploys {KEY_FILE} (not shown)",
                    dest=KEY_FILE, content=HiddenValue(key), public=None, user=USER,
                    group=USER, node=plan.node)


def services(ctx: AgentContext) -> None:
    """Deploy tools, the unit, and the service enabled, running and restarted on change."""
    plan = receiver(ctx)
    if plan is None:
        return
    tools = build_deploy_tools()
    release_unpacked(name=f"Deploy tools {tools.id} (pyinfra) for the webhook receiver",
                     release_id=tools.id, tarball=str(tools.path), releases_dir=TOOLS_DIR,
                     node=plan.node)
    release_deps, tools_deps = deps_keys()
    deps_seeded(name="Release build cache of the receiver's deploys (no package index needed)",
                cache=DEPS_CACHE, user=USER, node=plan.node,
                trees=[(release_deps, f"{RELEASES}/{ctx.release.id}/site"),
                       (tools_deps, f"{TOOLS_DIR}/{tools.id}/site")],
                leave_out=[*SHIPPED_PACKAGES, RELEASE_FILE, BROKEN_MARKER])
    unit = managed_file(name=f"Unit {UNIT}", dest=UNIT_PATH, content=unit_text(ctx, tools.id),
                        user="root", group="root", mode="644", node=plan.node)
    agent_service(
        name=f"{UNIT} enabled, running, restarted if its release, tools, unit or env changed",
        unit=UNIT, node=plan.node, unit_file=unit, triggers=list(plan.triggers),
        restart=restart_command())

