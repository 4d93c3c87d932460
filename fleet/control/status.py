"""Fleet status: SSH reachability and deep health of every agent, probed in parallel.

HTTP alone says little when a node is down or its gateway is wedged: each agent is probed
over real SSH (the user, port, key and pinned host keys pyinfra uses) *and* over its health
endpoint, concurrently, with short timeouts.
"""

from __future__ import annotations

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
    keys_of,
    require_known_hosts,
    ssh_settings,
    unknown_agents,
)
from fleet.core.bounded_http import AnswerError, get
from fleet.core.errors import StatusError
from fleet.core.registry import DEFAULT_SSH_USER, Agent, Registry
from fleet.node.runtime.state import runtime_ready

DEFAULT_TIMEOUT = 2.0
OK = "ok"
CONTROL_DIR_ENV = "FLEET_SSH_CONTROL_DIR"
CONTROL_PERSIST_SECONDS = 120


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


def ssh_command(agent: Agent, registry: Registry, timeout: float) -> list[str]:
    """The ``ssh`` argv that reaches ``agent`` with the same settings as the pyinfra inventory.

    Connections are shared (``ControlMaster``): a repeated ``fleet status`` reuses the master
    connection of the last one for a while instead of a new key exchange per agent.
    """
    settings = ssh_settings(agent, registry)  # the deploy's: host keys pinned, strict
    command = [
        "ssh", *settings.ssh_args(),
        "-o", f"ConnectTimeout={max(1, int(timeout))}",
        "-o", "LogLevel=ERROR",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={control_dir()}/%C",
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
    """End the shared master connection to ``agent`` (its host key changed: nothing may go
    on riding the connection opened before)."""
    command = ssh_command(agent, registry, timeout)
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
    command = [*ssh_command(agent, registry, timeout), PROBE_SCRIPT]
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
    status = AgentStatus(agent=agent.name, role=agent.role, host=agent.host,
                         region=agent.region)
    with ThreadPoolExecutor(max_workers=2) as pool:
        ssh_future = (pool.submit(probe_ssh, agent, registry, timeout, pinned)
                      if pinned is not None else
                      pool.submit(lambda: (host_key_reason(agent, "not pinned"), None)))
        health_future = pool.submit(probe_health, agent, timeout, think)
        status.ssh, status.system = ssh_future.result()
        status.health, body = health_future.result()
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
    """Probe every agent of ``registry`` in parallel; results grouped by region
    (:func:`region_sorted`). Refuses (:class:`fleet.control.hosts.HostKeyError`) when the registry
    pins no host keys."""
    if shutil.which("ssh") is None:
        raise StatusError("the `ssh` client is not installed",
                          hint="Install it: apt-get install openssh-client")
    pinned = require_known_hosts(registry)
    agents = region_sorted(registry)
    unknown = {agent.name for agent in unknown_agents(pinned, agents)}
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(agents)))) as pool:
        return list(pool.map(lambda agent: probe_agent(
            agent, registry, timeout, keys_of(pinned, agent) if agent.name not in unknown
            else None, think), agents))


def region_sorted(registry: Registry) -> list[Agent]:
    """The agents grouped by region in the order of ``fleet.regions`` (registry order within
    a region); in registry order when the fleet lists no regions."""
    if not registry.regions:
        return list(registry)
    order = registry.region_order()
    return sorted(registry, key=lambda agent: order.index(agent.region)
                  if agent.region in order else len(order))

