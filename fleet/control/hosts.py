"""Host keys of the fleet: first contact is explicit.

``fleet hosts scan`` asks each agent's host for its SSH host keys (``ssh-keyscan``) and records
them in the registry's ``known_hosts`` file (``fleet.known_hosts``, relative to the registry's
folder; ``known_hosts`` beside the registry while unset); the operator checks the printed
fingerprints. Deploys and ``fleet status`` then connect with strict host key checking against
that file only: an unknown or changed key is refused, and with no ``fleet.known_hosts`` nothing
connects at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleet.core.atomic import write_atomic
from fleet.core.errors import FleetError
from fleet.core.registry import Agent, Registry

DEFAULT_FILE = "known_hosts"
SSH_CONFIG_ENV = "FLEET_SSH_CONFIG"
"""An ssh_config file every connection reads (a ProxyJump bastion, say); host keys stay
pinned to the registry's known_hosts."""
KEY_TYPES = "ed25519,ecdsa,rsa"
KEY_BLOB_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
SCAN_TIMEOUT_S = 5
TRUST_HINT = ("After checking the fingerprint against the server's own (`ssh-keygen -lf "
              "/etc/ssh/ssh_host_ed25519_key.pub` on its console), trust it with "
              "`fleet hosts scan {names}`.")


class HostKeyError(FleetError):
    """Host keys are not pinned, unknown, changed, or cannot be scanned."""


@dataclass(frozen=True)
class HostKey:
    """One host key of an agent's host, as a known_hosts line holds it."""

    agent: str
    pattern: str  # ``host`` or ``[host]:port``
    key_type: str
    key: str  # base64 blob
    status: str = ""  # after a scan: new, changed or unchanged

    @property
    def fingerprint(self) -> str:
        """OpenSSH's ``SHA256:...`` fingerprint."""
        digest = hashlib.sha256(base64.b64decode(self.key)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        return f"{self.pattern} {self.key_type} {self.key}"


def host_pattern(agent: Agent) -> str:
    """How known_hosts names the agent's SSH endpoint."""
    return agent.host if agent.ssh_port == 22 else f"[{agent.host}]:{agent.ssh_port}"


def known_hosts_path(registry: Registry) -> Path | None:
    """The registry's ``fleet.known_hosts`` (relative to the registry's folder), or None."""
    if not registry.known_hosts:
        return None
    return registry.path.parent / os.path.expanduser(registry.known_hosts)


def scan_target(registry: Registry) -> Path:
    """Where ``fleet hosts scan`` records keys: ``fleet.known_hosts``, else beside the
    registry."""
    return known_hosts_path(registry) or registry.path.parent / DEFAULT_FILE


def _matches(field: str, pattern: str) -> bool:
    """Whether a known_hosts host field (comma-separated names or one hashed ``|1|`` name)
    names ``pattern``."""
    for name in field.split(","):
        if name.startswith("|1|"):
            try:
                salt, digest = (base64.b64decode(part) for part in name[3:].split("|", 1))
            except ValueError:
                continue
            if hmac.compare_digest(hmac.new(salt, pattern.encode(), "sha1").digest(), digest):
                return True
        elif name == pattern:
            return True
    return False


def _entries(text: str) -> Iterable[tuple[str, str, str, str]]:
    """``(line, host field, key type, key)`` of each plain known_hosts entry (markers such as
    ``@revoked`` and comments are kept as lines but give no entry)."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith(("#", "@")):
            yield line, fields[0], fields[1], fields[2]


def keys_of(path: Path, agent: Agent) -> list[HostKey]:
    """The keys ``path`` pins for ``agent``'s host (none if the file is missing)."""
    return pinned_keys(path, [agent])[agent.name]


def pinned_keys(path: Path, agents: Iterable[Agent]) -> dict[str, list[HostKey]]:
    """The keys ``path`` pins for each agent's host, by agent name (none if the file is
    missing): the file is read and split once for the whole fleet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    entries = list(_entries(text))
    found: dict[str, list[HostKey]] = {}
    for agent in agents:
        pattern = host_pattern(agent)
        found[agent.name] = [HostKey(agent.name, pattern, key_type, key)
                             for _, field, key_type, key in entries
                             if _matches(field, pattern)]
    return found


def require_known_hosts(registry: Registry) -> Path:
    """The pinned host keys file; :class:`HostKeyError` when the registry sets none or it is
    missing (nothing may connect then)."""
    path = known_hosts_path(registry)
    if path is None:
        raise HostKeyError(
            f"{registry.path}: fleet.known_hosts is not set, so host keys cannot be checked; "
            "refusing to connect to any agent",
            hint="Run `fleet hosts scan`, check the fingerprints it prints, then set "
                 f"`known_hosts: {DEFAULT_FILE}` under `fleet:` in the registry.")
    if not path.is_file():
        raise HostKeyError(f"{path}: known_hosts file (fleet.known_hosts) not found",
                           hint=f"Record the host keys with `fleet hosts scan`: {path}.")
    return path


def unknown_agents(path: Path, agents: Iterable[Agent]) -> list[Agent]:
    """The agents whose host has no key in ``path``."""
    listed = list(agents)
    keys = pinned_keys(path, listed)
    return [agent for agent in listed if not keys[agent.name]]


def check_known_hosts(registry: Registry, names: Sequence[str] = ()) -> Path:
    """Refuse (:class:`HostKeyError`) unless the registry pins host keys for every agent named
    (all by default); returns the known_hosts file. Changed keys are refused when connecting."""
    path = require_known_hosts(registry)
    agents = [registry.get(name) for name in names] if names else list(registry)
    unknown = unknown_agents(path, agents)
    if unknown:
        listed = ", ".join(f"{agent.name} ({host_pattern(agent)})" for agent in unknown)
        raise HostKeyError(f"{path}: no host key pinned for {listed}",
                           hint=TRUST_HINT.format(names=" ".join(a.name for a in unknown)))
    return path


def keyscan(agent: Agent, timeout: float = SCAN_TIMEOUT_S) -> list[HostKey]:
    """Ask the agent's host for its host keys (``ssh-keyscan``)."""
    command = ["ssh-keyscan", "-T", str(max(1, int(timeout))), "-p", str(agent.ssh_port),
               "-t", KEY_TYPES, agent.host]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise HostKeyError("the `ssh-keyscan` command is not installed",
                           hint="Install it: apt-get install openssh-client") from None
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(command, 1, "", "timed out")
    pattern = host_pattern(agent)
    keys = [HostKey(agent.name, pattern, fields[1], fields[2])
            for fields in (line.split() for line in done.stdout.splitlines())
            if len(fields) >= 3 and not fields[0].startswith("#")]
    if not keys:
        reason = ([line for line in done.stderr.splitlines() if not line.startswith("#")]
                  or [f"ssh-keyscan exited {done.returncode}"])[-1]
        raise HostKeyError(f"{agent.name}: no host key from {pattern}: {reason}",
                           hint="Check that the agent's host and ssh_port are right and sshd "
                                "runs there, then scan again.")
    return keys


def scan(registry: Registry, names: Sequence[str] = ()) -> tuple[Path, list[HostKey]]:
    """Record the host keys of the agents named (all by default) in the registry's known_hosts
    file, replacing what it held for their hosts; the file and the keys, each marked new,
    changed or unchanged."""
    agents = [registry.get(name) for name in names] if names else list(registry)
    path = scan_target(registry)
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(agents)))) as pool:
        found = [key for keys in pool.map(keyscan, agents) for key in keys]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    before = {(agent.name, key.key_type): key.key for agent in agents
              for key in keys_of(path, agent)}
    patterns = {host_pattern(agent) for agent in agents}
    kept = [line for line in text.splitlines()
            if not any(_matches(field, pattern) for _, field, _, _ in _entries(line)
                       for pattern in patterns)]
    marked = [HostKey(key.agent, key.pattern, key.key_type, key.key,
                      "new" if (key.agent, key.key_type) not in before
                      else "unchanged" if before[(key.agent, key.key_type)] == key.key
                      else "changed") for key in found]
    _write(path, "".join(f"{line}\n" for line in [*kept, *(key.line for key in marked)]))
    return path, marked


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (0644: host keys are public)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o644)


@dataclass(frozen=True)
class SshSettings:
    """How the controller reaches one agent over SSH: the one place deploy (pyinfra), status,
    ``fleet test`` (testinfra) and the lab take their settings from. Host keys are checked
    strictly against the registry's known_hosts only (no user or global file); with none set,
    against an empty file, so every host key is refused."""

    user: str
    host: str
    port: int
    known_hosts: str  # absolute path, or os.devnull
    key: str | None = None
    config_file: str | None = None

    def options(self) -> list[str]:
        """OpenSSH ``-o`` options (``NAME=value``), also valid in an ssh_config ``Host``."""
        found = ["BatchMode=yes", "StrictHostKeyChecking=yes",
                 f"UserKnownHostsFile={self.known_hosts}", "GlobalKnownHostsFile=/dev/null",
                 "UpdateHostKeys=no"]
        if self.key:
            found += [f"IdentityFile={self.key}", "IdentitiesOnly=yes"]
        return found

    def ssh_args(self) -> list[str]:
        """The ``ssh`` arguments before the destination (``-F``, ``-p``, every ``-o``)."""
        args = ["-F", self.config_file] if self.config_file else []
        args += ["-p", str(self.port)]
        for option in self.options():
            args += ["-o", option]
        return args

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def config_block(self, alias: str, extra: Sequence[str] = ()) -> str:
        """The same settings as an ssh_config ``Host alias`` block (``ssh -F``, testinfra),
        with ``extra`` options (``NAME=value``) after them."""
        lines = [f"HostName={self.host}", f"Port={self.port}", f"User={self.user}",
                 *self.options(), *extra]
        return f"Host {alias}\n" + "".join(f"    {line.replace('=', ' ', 1)}\n"
                                            for line in lines)

    def pyinfra_data(self) -> dict[str, object]:
        """The same settings as pyinfra SSH connector host data."""
        data: dict[str, object] = {
            "ssh_hostname": self.host, "ssh_user": self.user, "ssh_port": self.port,
            "ssh_known_hosts_file": self.known_hosts, "ssh_strict_host_key_checking": "yes"}
        if self.key:
            data["ssh_key"] = self.key
        if self.config_file:
            data["ssh_config_file"] = self.config_file
        return data


def ssh_settings(agent: Agent, registry: Registry) -> SshSettings:
    """The SSH settings reaching ``agent`` (see :class:`SshSettings`)."""
    pinned = known_hosts_path(registry)
    return SshSettings(user=agent.ssh_user, host=agent.host, port=agent.ssh_port,
                       known_hosts=str(pinned.resolve()) if pinned else os.devnull,
                       key=registry.ssh_key or None,
                       config_file=os.environ.get(SSH_CONFIG_ENV) or None)


def changed_host_key(agent: Agent, pinned: Sequence[HostKey],
                     offered: str) -> HostKey | None:
    """The key ``agent``'s host offers that differs from the one ``pinned`` holds for its
    type (or, sharing no type with them, the first it offers), else ``None``.

    ``offered`` is the text of the host's ``/etc/ssh/ssh_host_*_key.pub`` files, read over
    the SSH connection itself: sshd loads those keys for every new connection, so a key
    regenerated while a shared master stays open is seen by the next probe at no extra
    connection. Nothing offered (or nothing pinned) is not judged here."""
    now: dict[str, str] = {}
    for fields in (line.split() for line in offered.splitlines()):
        if len(fields) >= 2 and KEY_BLOB_RE.fullmatch(fields[1]):
            now.setdefault(fields[0], fields[1])
    known = {key.key_type: key.key for key in pinned}
    if not now or not known:
        return None
    common = set(now) & set(known)
    differing = (sorted(key_type for key_type in common if now[key_type] != known[key_type])
                 if common else sorted(now))
    if not differing:
        return None
    return HostKey(agent.name, host_pattern(agent), differing[0], now[differing[0]], "changed")
