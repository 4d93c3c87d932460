"""Phase 6b, sandbox (after services: it restarts no agent, so verify's stability window of
a (re)started agent runs while it is set up): the agent's test sandbox: the root-owned policy
``/etc/fleet/AGENT/sandbox.json`` (what runs, its limits, its network allowlist:
:mod:`fleet.core.sandbox_policy`), the socket ``fleet-sandbox-AGENT.socket`` the agent's
runtime connects to and the root front door it starts per connection
(``fleet-sandbox-AGENT@.service``, :mod:`fleet.node.work.sandbox`).

The files are rendered by :mod:`fleet.control.render` and decided from the node's one
snapshot (:func:`~deploys.ops.managed_file`, :func:`~deploys.ops.timers_running`); the
daemon-reload and the socket's restart hang on their change, and nothing here restarts the
agent. A no-change deploy plans nothing here but the check of the snapshot.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable
from typing import Any, Protocol

from pyinfra.operations import systemd

from deploys.context import CURRENT, UNIT_DIR, AgentContext, phase
from deploys.ops import Outcome, managed_file, timers_running
from fleet.control import render
from fleet.control.templates import read_template
from fleet.core.sandbox_policy import (
    Resolver,
    SandboxPolicy,
    SandboxPolicyError,
    allowed,
    policy_for,
)
from fleet.node.work.sandbox import GRACE_S, POLICY_FILE, SOCKET_DIR

SOCKET_TEMPLATE = "fleet-sandbox.socket.j2"
SERVICE_TEMPLATE = "fleet-sandbox@.service.j2"
MAX_CONNECTIONS = 2  # runs at once per agent; more connections are closed unanswered
POLICY = "Sandbox policy (root's: the test command, its limits, its network allowlist)"
SOCKET_FILE = "Sandbox socket unit"
SERVICE_FILE = "Sandbox front door unit"
RELOAD = "systemd daemon-reload (sandbox units changed)"
LISTENING = "Sandbox socket enabled and listening (restarted when its file changed)"
MAX_ADDRESSES = 8  # of one forge host name, pinned in the policy


class Source(Protocol):
    """What the sandbox needs of one ``work.sources`` entry."""

    api_url: str
    git_url: str


@functools.cache
def resolved(host: str, port: int) -> tuple[str, ...]:
    """The addresses of forge host ``host`` as the controller's resolver gives them (once per
    deploy: every agent's policy pins the same ones), at most :data:`MAX_ADDRESSES`;
    :class:`SandboxPolicyError` when it does not resolve."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise SandboxPolicyError(f"the forge host {host!r} does not resolve ({exc}); the test "
                                 "sandbox allows the addresses it resolves to at deploy "
                                 "time") from None
    addresses: list[str] = []
    refused: list[str] = []
    for *_, address in found:
        try:
            entry = allowed(str(address[0]), port).ip
        except SandboxPolicyError:  # an IPv6 address with a zone, 0.0.0.0 (a DNS blocklist's)
            refused.append(str(address[0]))
            continue
        if entry not in addresses:
            addresses.append(entry)
    if not addresses:
        besides = f" a firewall rule can hold (it gave {', '.join(refused[:4])})" \
            if refused else ""
        raise SandboxPolicyError(f"the forge host {host!r} resolved to no address{besides}")
    return tuple(sorted(addresses)[:MAX_ADDRESSES])


def policy(work_config: Any | None = None, resolve: Resolver = resolved) -> SandboxPolicy:
    """The sandbox policy from the registry's ``work:`` section (its ``test_command`` and the
    hosts of its sources' ``api_url`` and ``git_url``, a host name pinned to the addresses
    ``resolve`` gives it); the defaults, with no network, when there is none."""
    if work_config is None:
        return policy_for()
    sources: Iterable[Source] = getattr(work_config, "sources", ())
    urls = [url for source in sources for url in (source.api_url, source.git_url) if url]
    return policy_for(getattr(work_config, "test_command", None), urls, resolve=resolve)


def policy_problem(work_config: Any | None, resolve: Resolver = resolved) -> str:
    """Why the sandbox policy cannot be made (a forge host that does not resolve), empty when
    it can: preflight refuses the node with it, before anything changes."""
    try:
        policy(work_config, resolve)
    except SandboxPolicyError as exc:
        return str(exc)
    return ""


def socket_unit(ctx: AgentContext) -> str:
    return ctx.sandbox_units[0]


def unit_texts(ctx: AgentContext, chosen: SandboxPolicy) -> dict[str, str]:
    """The socket and the front door's template unit, by file name."""
    socket_text = render.unit_file(
        read_template(SOCKET_TEMPLATE), agent=ctx.name, user_name=ctx.user,
        socket_path=f"{SOCKET_DIR}/{ctx.name}.sock", max_connections=MAX_CONNECTIONS)
    service_text = render.unit_file(
        read_template(SERVICE_TEMPLATE), agent=ctx.name, user_name=ctx.user,
        etc_dir=ctx.etc_dir, state_dir=ctx.state_dir, current=CURRENT,
        runtime_max_s=chosen.runtime_max_s + 2 * GRACE_S + 60)
    socket_name, service_name = ctx.sandbox_units
    return {socket_name: socket_text, service_name: service_text}


@phase("Sandbox")
def run(ctx: AgentContext, work_config: Any | None = None) -> list[Outcome]:
    """Policy file, socket and front door units, daemon-reload when a unit changed, the
    socket enabled and listening (restarted when its unit changed). Returns the writes."""
    chosen = policy(work_config)
    written = [ctx.plan(managed_file, POLICY, dest=f"{ctx.etc_dir}/{POLICY_FILE}",
                        content=render.config_json(chosen.to_dict()), user="root", group="root",
                        mode="644", node=ctx.node, diffs=ctx.diffs())]
    units = []
    for (unit, text), name in zip(unit_texts(ctx, chosen).items(), (SOCKET_FILE, SERVICE_FILE),
                                  strict=True):
        units.append(ctx.plan(managed_file, name, dest=f"{UNIT_DIR}/{unit}", content=text,
                              user="root", group="root", mode="644", node=ctx.node,
                              diffs=ctx.diffs()))
    if any(op.will_change for op in units):
        ctx.plan(systemd.daemon_reload, RELOAD, _if=lambda: any(op.did_change() for op in units))
    ctx.plan(timers_running, LISTENING, timers=[(socket_unit(ctx), units[0])], node=ctx.node,
             what="sandbox socket is")
    return [*written, *units]
