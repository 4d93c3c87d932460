"""The test sandbox's policy: what the root front door (:mod:`fleet.node.work.sandbox`) runs
for an agent, with which limits and which network allowlist.

The deploy renders it to ``/etc/fleet/AGENT/sandbox.json`` (root's, 0644, through
:func:`fleet.control.render.config_json`); the front door reads it from there and never takes
a command or a limit from the agent's request. Both sides check it with :func:`policy_from_dict`,
so a value the deploy would refuse is refused on the node too:

- ``argv``: 1-:data:`MAX_ARGS` arguments, each 1-:data:`MAX_ARG` characters, no control
  character; the program (``argv[0]``) of :data:`PROGRAM_RE` (no ``-`` or ``+`` first: it is
  never read as an option of ``systemd-run``, nor as one of systemd's command prefixes);
- ``limits``: integers in the ranges of :data:`LIMIT_RANGES` (defaults :data:`DEFAULT_LIMITS`);
- ``allow``: at most :data:`MAX_ALLOW` ``{"ip": IP literal, "port": 1-65535}`` entries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fleet.core.errors import FleetError
from fleet.core.validate import unsafe_character

DEFAULT_ARGV = ("python3", "-m", "pytest", "-q")
MAX_ARGS = 32
MAX_ARG = 256
MAX_ALLOW = 32
PROGRAM_RE = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./+-]{0,255}", re.ASCII)
PROGRAM_FORM = "letters, digits and _ . / + - (+ and - not first), like python3 or /usr/bin/make"
LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "cpu_quota_percent": (1, 800),
    "memory_max_mib": (16, 65536),
    "tasks_max": (4, 4096),
    "runtime_max_s": (1, 3600),
    "output_max_kib": (1, 1024),
}
DEFAULT_LIMITS: dict[str, int] = {"cpu_quota_percent": 100, "memory_max_mib": 512,
                                  "tasks_max": 64, "runtime_max_s": 600, "output_max_kib": 64}
FIELDS = ("argv", "limits", "allow")
DEFAULT_PORTS = {"http": 80, "https": 443, "ssh": 22, "git": 9418}


class SandboxPolicyError(FleetError):
    """A sandbox policy value is not of the form it must have."""

    hint = ("Fix `work.test_command` or the `work.sources` URLs in the registry (an argv list, "
            "hosts as IP addresses), then deploy again.")


@dataclass(frozen=True)
class Allowed:
    """One address the test command may reach (``IPAddressAllow=``; the port is recorded,
    systemd's firewall filters by address only)."""

    ip: str
    port: int


@dataclass(frozen=True)
class SandboxPolicy:
    """What the sandbox runs (``argv``, no shell), its limits and its network allowlist."""

    argv: tuple[str, ...] = DEFAULT_ARGV
    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    allow: tuple[Allowed, ...] = ()

    @property
    def cpu_quota_percent(self) -> int:
        return self.limits["cpu_quota_percent"]

    @property
    def memory_max_mib(self) -> int:
        return self.limits["memory_max_mib"]

    @property
    def tasks_max(self) -> int:
        return self.limits["tasks_max"]

    @property
    def runtime_max_s(self) -> int:
        return self.limits["runtime_max_s"]

    @property
    def output_max_bytes(self) -> int:
        return self.limits["output_max_kib"] * 1024

    def to_dict(self) -> dict[str, Any]:
        """As the policy file holds it."""
        return {"argv": list(self.argv), "limits": dict(sorted(self.limits.items())),
                "allow": [{"ip": item.ip, "port": item.port} for item in self.allow]}


def argv_problem(argv: Any) -> str:
    """Why ``argv`` is not a test command the sandbox may run (empty when it is one)."""
    if not isinstance(argv, list | tuple) or not argv:
        return f"{argv!r} is not a non-empty list of arguments (like [python3, -m, pytest])"
    if len(argv) > MAX_ARGS:
        return f"has {len(argv)} arguments; at most {MAX_ARGS} allowed"
    for index, arg in enumerate(argv):
        if not isinstance(arg, str) or not arg or len(arg) > MAX_ARG:
            return f"argument {index + 1} ({arg!r}) is not a string of 1-{MAX_ARG} characters"
        problem = unsafe_character(arg)
        if problem:
            return f"argument {index + 1} holds {problem}"
    if not PROGRAM_RE.fullmatch(argv[0]):
        return f"the program {argv[0]!r} is not a program name ({PROGRAM_FORM})"
    return ""


def _limits(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise SandboxPolicyError(f"limits: {value!r} is not a mapping")
    unknown = sorted(set(value) - set(LIMIT_RANGES), key=str)
    if unknown:
        raise SandboxPolicyError(f"limits: unknown field {unknown[0]!r} (known: "
                                 f"{', '.join(LIMIT_RANGES)})")
    limits = dict(DEFAULT_LIMITS)
    for name, number in value.items():
        low, high = LIMIT_RANGES[name]
        if type(number) is not int or not low <= number <= high:
            raise SandboxPolicyError(f"limits.{name}: {number!r} is not an integer in "
                                     f"{low}..{high}")
        limits[name] = number
    return limits


def allowed(ip: Any, port: Any) -> Allowed:
    """One allowlist entry: an IP literal (written as :mod:`ipaddress` spells it) and a port."""
    if not isinstance(ip, str) or len(ip) > 64 or "%" in ip:  # no IPv6 zone: no rule holds it
        raise SandboxPolicyError(f"allow: {ip!r} is not an IP address")
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise SandboxPolicyError(f"allow: {ip!r} is not an IP address (the sandbox's "
                                 "firewall takes addresses, not host names)") from None
    if address.is_unspecified:  # a DNS blocklist's answer; a connection to it stays local
        raise SandboxPolicyError(f"allow: {ip} is the unspecified address, no server's")
    if type(port) is not int or not 1 <= port <= 65535:
        raise SandboxPolicyError(f"allow: port {port!r} of {ip} is not in 1..65535")
    return Allowed(str(address), port)


def policy_from_dict(data: Any) -> SandboxPolicy:
    """The policy in ``data`` (the policy file's JSON), checked; else
    :class:`SandboxPolicyError` naming the field."""
    if not isinstance(data, Mapping):
        raise SandboxPolicyError(f"{type(data).__name__} is not a policy mapping")
    unknown = sorted(set(data) - set(FIELDS), key=str)
    if unknown:
        raise SandboxPolicyError(f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    argv = data.get("argv", list(DEFAULT_ARGV))
    problem = argv_problem(argv)
    if problem:
        raise SandboxPolicyError(f"argv: {problem}")
    entries = data.get("allow", [])
    if not isinstance(entries, list) or len(entries) > MAX_ALLOW:
        raise SandboxPolicyError(f"allow: not a list of at most {MAX_ALLOW} entries")
    allow = []
    for entry in entries:
        if not isinstance(entry, Mapping) or set(entry) != {"ip", "port"}:
            raise SandboxPolicyError(f"allow: {entry!r} is not {{ip: ADDRESS, port: N}}")
        allow.append(allowed(entry["ip"], entry["port"]))
    return SandboxPolicy(argv=tuple(argv), limits=_limits(data.get("limits", {})),
                         allow=tuple(dict.fromkeys(allow)))


Resolver = Callable[[str, int], Sequence[str]]
"""The addresses of a host name and port (the controller's resolver at deploy time)."""


def url_allowed(url: str, resolve: Resolver | None = None) -> list[Allowed]:
    """The allowlist entries of a forge or git URL: its host and port (the scheme's default
    when none is written); a host name is pinned to the addresses ``resolve`` gives it (no
    ``resolve``: refused, the firewall takes addresses only)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError as exc:
        raise SandboxPolicyError(f"allow: {url!r} is not a URL ({exc})") from None
    if not parts.hostname or port is None:
        raise SandboxPolicyError(f"allow: {url!r} names no host and port")
    try:
        return [allowed(parts.hostname, port)]
    except SandboxPolicyError:
        if resolve is None or _is_address(parts.hostname):  # an address refused stays so
            raise
    addresses = list(resolve(parts.hostname, port))
    if not addresses:
        raise SandboxPolicyError(f"allow: {parts.hostname!r} resolved to no address")
    return [allowed(address, port) for address in addresses]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def policy_for(test_command: Sequence[str] | None = None, urls: Iterable[str] = (),
               limits: Mapping[str, int] | None = None,
               resolve: Resolver | None = None) -> SandboxPolicy:
    """The policy from the registry's ``work:`` values: the test command (default
    :data:`DEFAULT_ARGV`), the allowlist from the sources' URLs (none: no network at all), a
    host name's addresses pinned by ``resolve``."""
    entries = list(dict.fromkeys(entry for url in urls for entry in url_allowed(url, resolve)))
    if len(entries) > MAX_ALLOW:
        raise SandboxPolicyError(
            f"allow: the forge URLs come to {len(entries)} addresses and ports (a DNS name "
            f"counts each address it resolves to); the sandbox allows at most {MAX_ALLOW}: "
            "list fewer forge hosts, or one host for a source's api_url and git_url")
    return policy_from_dict({
        "argv": list(test_command or DEFAULT_ARGV), "limits": dict(limits or {}),
        "allow": [{"ip": item.ip, "port": item.port} for item in entries]})
