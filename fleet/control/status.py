"""Fleet status: SSH reachability and deep health of every agent, probed in parallel.

HTTP alone says little when a node is down or its gateway is wedged: each agent is probed
over real SSH (the user, port, key and pinned host keys pyinfra uses) *and* over its health
endpoint, concurrently, with short timeouts.

A first status opens one SSH connection per agent, and on a small controller its key exchange
is most of the cost: OpenSSH 9.x's default hybrid ``sntrup761x25519-sha512`` costs the client
about 0.1 s of CPU per connection (its reference code), ``curve25519-sha256`` about 0.015 s
(measured on the lab, OpenSSH 9.2). The probe's own connections therefore prefer
``mlkem768x25519-sha256`` (post-quantum and cheap, OpenSSH 9.9+) where the client has it, then
``curve25519-sha256``, ahead of the client's default list (``KexAlgorithms ^...``, OpenSSH
8.2+): host keys stay pinned and checked as strictly as ever. What a probe carries is public
(the system state, the node's public host keys), so a classical key exchange costs it no
secrecy; the probe's masters have their own sockets (``probe-%C``), so what else reaches a
node (state backups, sealed secrets) never rides them and keeps the client's default key
exchange.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.control.hosts import (
    TRUST_HINT,
    HostKey,
    changed_host_key,
    host_pattern,
    pinned_keys,
    require_known_hosts,
    ssh_settings,
)
from fleet.core.bounded_http import AnswerError, get
from fleet.core.errors import StatusError
from fleet.core.registry import DEFAULT_SSH_USER, Agent, Registry
from fleet.node.runtime.state import runtime_ready

DEFAULT_TIMEOUT = 2.0
OK = "ok"
CONTROL_DIR_ENV = "FLEET_SSH_CONTROL_DIR"
CONTROL_PERSIST_SECONDS = 120
PROBE_KEX = ("mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org")
"""Key exchanges the status probe prefers, cheapest secure first (see the module's doc)."""
SSH_PARALLEL = 32
"""SSH probes at once: enough to hide network round trips to remote hosts, few enough that
on a 2-core controller each handshake finishes within its timeout instead of all of them
sharing the CPU to the end."""
HTTP_PARALLEL = 64


@dataclass
class AgentStatus:
    """What one probe found; ``ssh`` and ``health`` are ``ok`` or a one-line reason."""

    agent: str
    role: str
    host: str
    region: str | None = None
    ssh: str = "not checked"
    system: str | None = None
    health: str = "not checked"
    release: str | None = None
    soul_sha256: str | None = None
    config_hash: str | None = None
    model: str | None = None
    round_trip_ms: float | None = None
    """The live model round trip's latency (``--think``), else the runtime's last one; None
    when neither succeeded."""
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """True when SSH works and the health endpoint says ok."""
        return self.ssh == OK and self.health == OK

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``, with the computed ``healthy`` flag."""
        return {**asdict(self), "healthy": self.healthy}


def control_dir() -> str:
    """Folder of the shared SSH master sockets (``$FLEET_SSH_CONTROL_DIR``, else in /tmp)."""
    path = os.environ.get(CONTROL_DIR_ENV) or os.path.join(
        tempfile.gettempdir(), f"sovereign-fleet-ssh-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@functools.cache
def probe_kex() -> str | None:
    """The probe's ``KexAlgorithms`` value: those of :data:`PROBE_KEX` this ``ssh`` client
    knows (``ssh -Q kex``), put ahead of its default list; None (the client's default) when
    it knows none or cannot say. Asked once per process."""
    try:
        done = subprocess.run(["ssh", "-Q", "kex"], capture_output=True, text=True, timeout=5,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    known = set(done.stdout.split()) if done.returncode == 0 else set()
    chosen = [name for name in PROBE_KEX if name in known]
    return "^" + ",".join(chosen) if chosen else None


def ssh_command(agent: Agent, registry: Registry, timeout: float,
                probe: bool = False) -> list[str]:
    """The ``ssh`` argv that reaches ``agent`` with the same settings as the pyinfra inventory.

    Connections are shared (``ControlMaster``): a repeated ``fleet status`` reuses the master
    connection of the last one for a while instead of a new key exchange per agent.
    ``probe``: the status probe's own connection (its own master, the cheap key exchange of
    :func:`probe_kex`); everything else keeps the client's default key exchange.
    """
    settings = ssh_settings(agent, registry)  # the deploy's: host keys pinned, strict
    kex = probe_kex() if probe else None
    command = [
        "ssh", *settings.ssh_args(),
        *(["-o", f"KexAlgorithms={kex}"] if kex else []),
        "-o", f"ConnectTimeout={max(1, int(timeout))}",
        "-o", "LogLevel=ERROR",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={control_dir()}/{'probe-' if probe else ''}%C",
        "-o", f"ControlPersist={CONTROL_PERSIST_SECONDS}",
        "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=2",
    ]
    return [*command, settings.destination]


def as_root(agent: Agent, registry: Registry, argv: list[str], timeout: float) -> list[str]:
    """The ``ssh`` argv running ``argv`` (quoted) as root on ``agent``'s node: through
    ``sudo -n`` when the login user is not root (the registry's ``fleet.become``)."""
    if agent.ssh_user != DEFAULT_SSH_USER and registry.become == "sudo":
        argv = ["sudo", "-n", *argv]
    return [*ssh_command(agent, registry, timeout), shlex.join(argv)]


def close_master(agent: Agent, registry: Registry, timeout: float) -> None:
    """End the shared master connections to ``agent``, the probe's and the others' (its host
    key changed: nothing may go on riding a connection opened before)."""
    for probe in (True, False):
        command = ssh_command(agent, registry, timeout, probe=probe)
        subprocess.run([*command[:-1], "-O", "exit", command[-1]], capture_output=True,
                       timeout=timeout + 1, stdin=subprocess.DEVNULL, check=False)


HOST_KEYS_MARK = "--- host keys ---"
# the system state, then the host keys sshd serves to new connections (public halves)
PROBE_SCRIPT = (f"systemctl is-system-running || true; echo '{HOST_KEYS_MARK}'; "
                "cat /etc/ssh/ssh_host_*_key.pub 2>/dev/null || true")


def probe_ssh(agent: Agent, registry: Registry, timeout: float,
              pinned: Sequence[HostKey] = ()) -> tuple[str, str | None]:
    """Log in, ask systemd for the system state and read the host keys the node serves;
    ``(ok | reason, state)``. A key that differs from ``pinned`` is refused and the shared
    master closed, even when that master was opened before the key changed."""
    command = [*ssh_command(agent, registry, timeout, probe=True), PROBE_SCRIPT]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 1,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:g}s", None
    if done.returncode != 0:
        if "Host key verification failed" in done.stderr:
            changed = "HOST IDENTIFICATION HAS CHANGED" in done.stderr
            return host_key_reason(agent, "changed" if changed else "unknown"), None
        reason = (done.stderr.strip().splitlines() or [f"ssh exited {done.returncode}"])[-1]
        return reason, None
    state, _, offered = done.stdout.partition(HOST_KEYS_MARK)
    key = changed_host_key(agent, pinned, offered)
    if key is not None:
        close_master(agent, registry, timeout)
        return (f"host key of {host_pattern(agent)} is changed (it now offers {key.key_type} "
                f"{key.fingerprint}): refused; " + TRUST_HINT.format(names=agent.name)), None
    return OK, state.strip() or None


def host_key_reason(agent: Agent, what: str) -> str:
    """The SSH probe's reason for a refused host key, saying how to trust it."""
    return (f"host key of {host_pattern(agent)} is {what}: refused; "
            + TRUST_HINT.format(names=agent.name))


def probe_health(agent: Agent, timeout: float,
                 think: bool = False) -> tuple[str, dict[str, Any]]:
    """GET the health endpoint, read within bounds (:mod:`fleet.core.bounded_http`);
    ``(ok | reason, body)``: ``ok`` only when /health says so
    and, for an agent with a runtime, says that runtime is ready (the runtime contract's
    verdict). ``think``: also a live model round trip on agents with a runtime (a wrong key or
    an unreachable provider shows as down)."""
    url = agent.health_endpoint
    if think and agent.runtime != "none":
        url += ("&" if "?" in url else "?") + "roundtrip=1"
    try:
        answer = get(url, timeout)
    except AnswerError as exc:
        return str(exc), {}
    try:
        body = answer.json()
    except AnswerError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if answer.status != 200:
        problems = "; ".join(map(str, body.get("problems", []))) or answer.reason
        return f"HTTP {answer.status}: {problems}", body
    if agent.runtime != "none" and not runtime_ready(body):
        return "runtime not ready: its /health does not say it is", body
    return OK, body


def probe_agent(agent: Agent, registry: Registry, timeout: float = DEFAULT_TIMEOUT,
                pinned: Sequence[HostKey] | None = (), think: bool = False) -> AgentStatus:
    """Probe one agent over SSH and HTTP at the same time. ``pinned``: the host keys the
    fleet pins for it; ``None`` (none pinned) means SSH is not tried."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        ssh_future = pool.submit(ssh_part, agent, registry, timeout, pinned)
        health_future = pool.submit(probe_health, agent, timeout, think)
        return agent_status(agent, ssh_future.result(), health_future.result())


def ssh_part(agent: Agent, registry: Registry, timeout: float,
             pinned: Sequence[HostKey] | None) -> tuple[str, str | None]:
    """:func:`probe_ssh`, or the reason it is not tried (no key pinned: ``pinned`` None)."""
    if pinned is None:
        return host_key_reason(agent, "not pinned"), None
    return probe_ssh(agent, registry, timeout, pinned)


def agent_status(agent: Agent, ssh: tuple[str, str | None],
                 health: tuple[str, dict[str, Any]]) -> AgentStatus:
    """One agent's status from its SSH probe's and its health probe's answers."""
    status = AgentStatus(agent=agent.name, role=agent.role, host=agent.host,
                         region=agent.region)
    status.ssh, status.system = ssh
    status.health, body = health
    status.release = body.get("release")
    status.soul_sha256 = body.get("soul_sha256")
    status.config_hash = body.get("config_hash")
    status.model = body.get("model")
    status.round_trip_ms = round_trip_ms(body)
    status.problems = [str(problem) for problem in body.get("problems", [])]
    return status


def round_trip_ms(body: dict[str, Any]) -> float | None:
    """The latency of the model round trip a /health answer shows: the live one it made when
    asked (``roundtrip=1``), else the runtime's last; None when that one failed or is not
    there."""
    runtime = body.get("runtime")
    if not isinstance(runtime, dict):
        return None
    trip = runtime.get("live_round_trip") or runtime.get("last_round_trip")
    if not isinstance(trip, dict) or trip.get("ok") is not True:
        return None
    latency = trip.get("latency_ms")
    if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
        return None
    return float(latency)


def probe_fleet(registry: Registry, timeout: float = DEFAULT_TIMEOUT,
                think: bool = False) -> list[AgentStatus]:
    """Probe every agent of ``registry`` in parallel (at most :data:`SSH_PARALLEL` SSH and
    :data:`HTTP_PARALLEL` health probes at once, one pool each, the two kinds side by side);
    results grouped by region (:func:`region_sorted`). Refuses
    (:class:`fleet.control.hosts.HostKeyError`) when the registry pins no host keys."""
    if shutil.which("ssh") is None:
        raise StatusError("the `ssh` client is not installed",
                          hint="Install it: apt-get install openssh-client")
    known_hosts = require_known_hosts(registry)
    agents = region_sorted(registry)
    pinned = pinned_keys(known_hosts, agents)  # the file read once for the whole fleet
    if agents:
        probe_kex()  # asked once, before the pool's threads would all ask at the same time
    with (ThreadPoolExecutor(max_workers=max(1, min(SSH_PARALLEL, len(agents)))) as ssh_pool,
          ThreadPoolExecutor(max_workers=max(1, min(HTTP_PARALLEL, len(agents)))) as http_pool):
        health = [http_pool.submit(probe_health, agent, timeout, think) for agent in agents]
        ssh = [ssh_pool.submit(ssh_part, agent, registry, timeout,
                               pinned[agent.name] or None) for agent in agents]
        return [agent_status(agent, ssh_future.result(), health_future.result())
                for agent, ssh_future, health_future in zip(agents, ssh, health, strict=True)]


def region_sorted(registry: Registry) -> list[Agent]:
    """The agents grouped by region in the order of ``fleet.regions`` (registry order within
    a region); in registry order when the fleet lists no regions."""
    if not registry.regions:
        return list(registry)
    order = registry.region_order()
    return sorted(registry, key=lambda agent: order.index(agent.region)
                  if agent.region in order else len(order))

