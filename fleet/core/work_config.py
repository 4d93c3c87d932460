"""The registry's ``work:`` section: where autonomous work comes from and how it is bounded.

```yaml
work:
  test_command: [python3, -m, pytest, -q]   # argv, no shell; run in the sandbox
  max_steps: 20          # model turns per item
  max_minutes: 15        # wall clock per item
  sources:
    - forge: gitea
      api_url: http://192.0.2.5:3000/api/v1
      git_url: http://192.0.2.5:3000/acme/shop.git
      repo: acme/shop
      label: fleet
      token: GITEA_TOKEN   # the NAME of a fleet secret, never its value
      capability_labels: {bug: code}
```

Every value is checked here, where it enters, because each one reaches an argv (the test
command, ``git clone``), a URL the forge clients call or the sandbox's network allowlist
(:func:`allowed_endpoints`). :func:`check_work` walks the composed YAML node so that each problem
names its line; the registry (:mod:`fleet.core.registry`) calls it and checks afterwards that some
agent declares every capability named in ``capability_labels`` (:func:`capability_problems`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from fleet.core.sandbox_policy import (
    SandboxPolicyError,
    argv_problem,
    policy_for,
    url_allowed,
)
from fleet.core.schedules import on_problem
from fleet.core.validate import host_problem

FORGES = ("gitea", "github", "gitlab")
FIELDS = ("test_command", "max_steps", "max_minutes", "intake_on", "sources")
REQUIRED = ("test_command", "sources")
SOURCE_FIELDS = ("forge", "api_url", "git_url", "repo", "label", "token", "capability_labels")
SOURCE_REQUIRED = ("forge", "api_url", "git_url", "repo", "label", "token")
DEFAULT_MAX_STEPS = 20
DEFAULT_MAX_MINUTES = 15
MAX_STEPS = 200
MAX_MINUTES = 240
MAX_SOURCES = 20
MAX_URL = 512
MAX_LABEL = 50  # GitHub's limit for a label name
MAX_CAPABILITY_LABELS = 32
MAX_REPO = 255
MAX_GITLAB_DEPTH = 8

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?P<name>{_DNS_LABEL}(?:\.{_DNS_LABEL})*)|\[(?P<ipv6>[0-9A-Fa-f:.]{{2,45}})\]"
URL_RE = re.compile(rf"(?P<scheme>https?)://(?:{_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
                    r"(?P<path>(?:/[A-Za-z0-9._~%!$&'()*+,;=:-]*)*)")
"""An http(s) URL matched in full: a DNS name, IPv4 or bracketed IPv6 host, an optional port
and path; no userinfo (``@``), query (``?``), fragment (``#``), space or control character."""
URL_FORM = ("http(s)://HOST[:PORT][/PATH] with a DNS name or IP address as HOST, no "
            "user:password@, no ?query or #fragment, at most 512 characters")
_SEGMENT = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,99})"
REPO_RE = re.compile(rf"{_SEGMENT}/{_SEGMENT}")
GITLAB_REPO_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{1,{MAX_GITLAB_DEPTH - 1}}}")
REPO_FORM = ("OWNER/NAME of letters, digits, '_', '.' and '-' (each part starting with a letter, "
             "digit or '_', no '..'; GitLab: GROUP/SUBGROUP/.../NAME)")
LABEL_RE = re.compile(rf"[^\x00-\x20\x7f-\x9f,](?:[^\x00-\x1f\x7f-\x9f,]{{0,{MAX_LABEL - 2}}}"
                      r"[^\x00-\x20\x7f-\x9f,])?")
LABEL_FORM = (f"1-{MAX_LABEL} printable characters, no comma, not starting or ending with a "
              "space")
TOKEN_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
TOKEN_FORM = ("the NAME of a fleet secret (an uppercase environment variable name like "
              "GITEA_TOKEN, at most 64 characters), never the token itself")
_VALUE_LIKE_RE = re.compile(r"[A-Z0-9]{24,}")  # a long run without '_': a value, not a name
CAPABILITY_FORM = "lowercase letters, digits, '.', '_' and '-'"
CAPABILITY_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class WorkSource:
    """One forge repository whose labelled issues become work items."""

    forge: str
    api_url: str
    git_url: str
    repo: str
    label: str
    token: str
    capability_labels: tuple[tuple[str, str], ...] = ()
    line: int = 0

    def capability_for(self, labels: Iterable[str]) -> str | None:
        """The capability routing an issue with ``labels``: the first of
        ``capability_labels`` (in registry order) that the issue carries, else None."""
        carried = set(labels)
        return next((capability for label, capability in self.capability_labels
                     if label in carried), None)

    def to_dict(self) -> dict[str, Any]:
        """As registry YAML spells it."""
        data: dict[str, Any] = {"forge": self.forge, "api_url": self.api_url,
                                "git_url": self.git_url, "repo": self.repo,
                                "label": self.label, "token": self.token}
        if self.capability_labels:
            data["capability_labels"] = dict(self.capability_labels)
        return data


@dataclass(frozen=True)
class WorkConfig:
    """The registry's ``work:`` section, every default filled in."""

    test_command: tuple[str, ...]
    sources: tuple[WorkSource, ...]
    max_steps: int = DEFAULT_MAX_STEPS
    max_minutes: int = DEFAULT_MAX_MINUTES
    intake_on: str = "*:0/10"
    """When the orchestrator's intake runs (a systemd calendar expression): :data:`INTAKE_ON`
    unless the registry says."""
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        """As registry YAML spells it."""
        return {"test_command": list(self.test_command), "max_steps": self.max_steps,
                "max_minutes": self.max_minutes, "intake_on": self.intake_on,
                "sources": [source.to_dict() for source in self.sources]}


Report = Callable[[yaml.Node | None, str, str], None]
"""Where a problem goes: ``report(node, "work.sources[0].repo", message)``; the registry's
validator adds the file and the node's line."""
Value = Callable[[yaml.Node], Any]
"""How a node becomes its Python value (the registry's safe loader)."""


def url_problem(value: Any) -> str:
    """Why ``value`` is not an http(s) URL a forge client or git may be pointed at (empty when
    it is): :data:`URL_RE` in full, a port 1-65535, a valid IP address where one is written."""
    if not isinstance(value, str):
        return f"{value!r} is not a string; write {URL_FORM}"
    if len(value) > MAX_URL:
        return f"is {len(value)} characters long; write {URL_FORM}"
    match = URL_RE.fullmatch(value)
    if match is None:
        return f"{value!r} is not a URL of the form {URL_FORM}"
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        return f"{value!r} has port {port}; a port is 1-65535"
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return f"{value!r} has {match['ipv6']!r} in brackets, which is not an IPv6 address"
    elif re.fullmatch(r"[0-9.]+", match["name"]):
        try:
            ipaddress.IPv4Address(match["name"])
        except ValueError:
            return f"{value!r} has host {match['name']!r}, which is not an IPv4 address"
    elif host_problem(match["name"]):  # e.g. 0x7f.1: a name the resolver reads as an address
        return f"{value!r} has host {match['name']!r}, which {host_problem(match['name'])}"
    return ""


def repo_problem(forge: str, value: Any) -> str:
    """Why ``value`` is not a repository path of ``forge`` (empty when it is)."""
    pattern = GITLAB_REPO_RE if forge == "gitlab" else REPO_RE
    if not isinstance(value, str) or len(value) > MAX_REPO or not pattern.fullmatch(value) \
            or ".." in value or any(part.endswith(".") for part in value.split("/")):
        return f"{value!r} is not a repository path ({REPO_FORM})"
    return ""


def label_problem(value: Any) -> str:
    """Why ``value`` is not a forge label name (empty when it is)."""
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value) or not value.isprintable():
        return f"{value!r} is not a label name ({LABEL_FORM})"
    return ""


def token_problem(value: Any) -> str:
    """Why ``value`` is not the name of the secret holding a forge token (empty when it is)."""
    if isinstance(value, str) and TOKEN_NAME_RE.fullmatch(value) \
            and not _VALUE_LIKE_RE.search(value):
        return ""
    shown = "a string" if isinstance(value, str) else repr(value)[:40]
    looks = isinstance(value, str) and (any(c.islower() or c == "-" for c in value)
                                        or _VALUE_LIKE_RE.search(value) is not None)
    why = ("looks like a token value: never write the token here; put it in the fleet "
           "secrets (`fleet secrets edit`) and write its name" if looks
           else f"{shown} is not a secret name")
    return f"{why} ({TOKEN_FORM})"


def command_problem(value: Any) -> str:
    """Why ``value`` is not a test command argv (empty when it is): the sandbox's own rule
    (:func:`fleet.core.sandbox_policy.argv_problem`), so what validates is what the node
    runs."""
    if not isinstance(value, list):
        return "is not a list of arguments; write a list like [python3, -m, pytest, -q]"
    problem = argv_problem(value)
    return f"{problem}; write a list like [python3, -m, pytest, -q] (no shell)" if problem \
        else ""


def sandbox_url_problem(value: Any) -> str:
    """Why the sandbox could not allow ``value``'s host and port (empty when it can): an IP
    address as it is, a host name pinned at deploy time to the addresses it resolves to
    (systemd's ``IPAddressAllow=`` takes addresses)."""
    problem = url_problem(value)
    if problem:
        return problem
    try:
        url_allowed(value, resolve=lambda host, port: ["192.0.2.1"])  # the shape, not DNS
    except SandboxPolicyError as exc:
        return f"{exc}; write the forge's address or its DNS name"
    return ""


def sandbox_allow_problem(urls: Sequence[str]) -> str:
    """Why the sandbox could not allow all of ``urls`` at once (empty when it can): each
    distinct host and port is one entry at least (a DNS name one per address at deploy time),
    and the allowlist holds :data:`~fleet.core.sandbox_policy.MAX_ALLOW`."""
    names: dict[str, str] = {}

    def placeholder(host: str, port: int) -> list[str]:  # one distinct address a name
        return [names.setdefault(host, str(ipaddress.IPv6Address("2001:db8::") + len(names)))]

    try:
        policy_for(None, urls, resolve=placeholder)
    except SandboxPolicyError as exc:
        return str(exc)
    return ""


def bounded_int_problem(value: Any, low: int, high: int) -> str:
    """Why ``value`` is not a whole number from ``low`` to ``high`` (empty when it is)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"{str(value)[:40]!r} is not a whole number from {low} to {high}"
    return ""


def endpoint(url: str) -> tuple[str, int]:
    """``(host, port)`` of a checked URL: the port written, else 443 for https and 80 for
    http; an IPv6 host without brackets."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def allowed_endpoints(config: WorkConfig) -> tuple[tuple[str, int], ...]:
    """Every ``(host, port)`` the sandbox may reach: each source's api_url and git_url, in
    registry order, each once."""
    found = [endpoint(url) for source in config.sources
             for url in (source.api_url, source.git_url)]
    return tuple(dict.fromkeys(found))


def source_key(source: WorkSource) -> tuple[str, str, int, str, str]:
    """What makes two sources the same repository: forge, API endpoint and path, and the
    repository path (case-insensitive, as forges match them)."""
    host, port = endpoint(source.api_url)
    path = urlsplit(source.api_url).path.rstrip("/")
    return source.forge, host.lower(), port, path, source.repo.lower()


def check_work(node: yaml.Node, value: Value, report: Report,
               mapping: Callable[[yaml.MappingNode, str, tuple[str, ...]],
                                 dict[str, tuple[yaml.Node, yaml.Node]]]) -> WorkConfig | None:
    """The ``work:`` section at ``node`` as a :class:`WorkConfig`, or None after reporting each
    problem (``report``) at its node. ``mapping`` lists a mapping's keys and reports unknown
    and repeated ones (the registry's own)."""
    form = "write `work: {test_command: [...], sources: [{forge: gitea, ...}]}`"
    if not isinstance(node, yaml.MappingNode):
        report(node, "work", f"must be a mapping; {form}")
        return None
    found = mapping(node, "work", FIELDS)
    problems = 0

    def bad(at: yaml.Node | None, where: str, message: str) -> None:
        nonlocal problems
        problems += 1
        report(at, where, message)

    for required in REQUIRED:
        if required not in found:
            bad(node, f"work.{required}", "missing required field")
    values = {key: (value(v), v) for key, (_, v) in found.items() if key in FIELDS}
    checks: dict[str, Callable[[Any], str]] = {"test_command": command_problem,
              "max_steps": lambda v: bounded_int_problem(v, 1, MAX_STEPS),
              "max_minutes": lambda v: bounded_int_problem(v, 1, MAX_MINUTES),
              "intake_on": on_problem}
    for key, check in checks.items():
        if key in values:
            problem = check(values[key][0])
            if problem:
                bad(values[key][1], f"work.{key}", problem)
    sources: list[WorkSource] = []
    if "sources" in values:
        sources_node = values["sources"][1]
        if not isinstance(sources_node, yaml.SequenceNode) \
                or not 1 <= len(sources_node.value) <= MAX_SOURCES:
            bad(sources_node, "work.sources", f"must be a list of 1-{MAX_SOURCES} sources "
                "like {forge: gitea, api_url: ..., git_url: ..., repo: OWNER/NAME, label: "
                "fleet, token: SECRET_NAME}")
        else:
            seen: dict[tuple[str, str, int, str, str], int] = {}
            for index, item in enumerate(sources_node.value):
                where = f"work.sources[{index}]"
                source = _source(item, where, value, bad, mapping)
                if source is None:
                    continue
                identity = source_key(source)
                if identity in seen:
                    bad(item, where, f"{source.forge} repository {source.repo!r} at "
                        f"{source.api_url} is already a source (line {seen[identity]}); list "
                        "each repository once")
                    continue
                seen[identity] = source.line
                sources.append(source)
    if sources and not problems:
        problem = sandbox_allow_problem([url for source in sources
                                         for url in (source.api_url, source.git_url)])
        if problem:
            bad(values["sources"][1], "work.sources", problem)
    if problems:
        return None
    return WorkConfig(test_command=tuple(values["test_command"][0]), sources=tuple(sources),
                      max_steps=values.get("max_steps", (DEFAULT_MAX_STEPS,))[0],
                      max_minutes=values.get("max_minutes", (DEFAULT_MAX_MINUTES,))[0],
                      intake_on=values.get("intake_on", (INTAKE_ON,))[0],
                      line=node.start_mark.line + 1)


def _source(node: yaml.Node, where: str, value: Value, bad: Report,
            mapping: Callable[[yaml.MappingNode, str, tuple[str, ...]],
                              dict[str, tuple[yaml.Node, yaml.Node]]]) -> WorkSource | None:
    """One entry of ``work.sources``, or None after reporting its problems."""
    if not isinstance(node, yaml.MappingNode):
        bad(node, where, f"must be a mapping of {', '.join(SOURCE_REQUIRED)} (and optionally "
            "capability_labels)")
        return None
    found = mapping(node, where, SOURCE_FIELDS)
    problems = 0

    def fail(at: yaml.Node | None, field: str, message: str) -> None:
        nonlocal problems
        problems += 1
        bad(at, f"{where}.{field}", message)

    for required in SOURCE_REQUIRED:
        if required not in found:
            fail(node, required, "missing required field")
    values = {key: (value(v), v) for key, (_, v) in found.items() if key in SOURCE_FIELDS}
    forge = values.get("forge", (None,))[0]
    if "forge" in values and forge not in FORGES:
        fail(values["forge"][1], "forge", f"{str(forge)[:40]!r} is not a forge kind "
             f"({', '.join(FORGES)})")
    checks: dict[str, Callable[[Any], str]] = {
        "api_url": sandbox_url_problem, "git_url": sandbox_url_problem, "label": label_problem,
        "token": token_problem, "repo": lambda v: repo_problem(str(forge), v)}
    for key, check in checks.items():
        if key in values:
            problem = check(values[key][0])
            if problem:
                fail(values[key][1], key, problem)
    pairs: list[tuple[str, str]] = []
    if "capability_labels" in values:
        pairs = _capability_labels(values["capability_labels"][1], where, fail)
    if problems:
        return None
    return WorkSource(forge=str(forge), api_url=values["api_url"][0],
                      git_url=values["git_url"][0], repo=values["repo"][0],
                      label=values["label"][0], token=values["token"][0],
                      capability_labels=tuple(pairs), line=node.start_mark.line + 1)


def _capability_labels(node: yaml.Node, where: str, fail: Report) -> list[tuple[str, str]]:
    """``capability_labels``: issue label -> capability of the agent that should work on it."""
    form = "write e.g. `capability_labels: {bug: code}` (issue label: capability)"
    if not isinstance(node, yaml.MappingNode) or len(node.value) > MAX_CAPABILITY_LABELS:
        fail(node, "capability_labels", f"must be a mapping of at most "
             f"{MAX_CAPABILITY_LABELS} labels; {form}")
        return []
    pairs: list[tuple[str, str]] = []
    for key_node, value_node in node.value:
        # the key as written: YAML 1.1 would read a bare `yes` or `on` as a boolean
        label = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        capability = value_node.value if isinstance(value_node, yaml.ScalarNode) \
            and value_node.tag == "tag:yaml.org,2002:str" else None
        problem = label_problem(label)
        if problem:
            fail(key_node, "capability_labels", problem)
        elif any(label == known for known, _ in pairs):
            fail(key_node, f"capability_labels.{label}", "repeated label")
        elif not isinstance(capability, str) or not CAPABILITY_RE.fullmatch(capability):
            fail(value_node, f"capability_labels.{label}",
                 f"{str(capability)[:40]!r} is not a capability name ({CAPABILITY_FORM})")
        else:
            pairs.append((str(label), capability))
    return pairs


def capability_problems(config: WorkConfig, declared: Iterable[str]) -> list[tuple[int, str]]:
    """``(line, message)`` for each capability of ``capability_labels`` that no agent
    declares (``declared``: every agent's capabilities)."""
    known = set(declared)
    return [(source.line, f"work.sources[{index}].capability_labels.{label}: no agent "
             f"declares {capability!r}; add it to an agent's `capabilities:` or drop the label")
            for index, source in enumerate(config.sources)
            for label, capability in source.capability_labels if capability not in known]


INTAKE_SCHEDULE = "work-intake"
"""The orchestrator's schedule running work intake (``fleet.node.work.intake``) when the
registry has a ``work:`` section."""
INTAKE_ON = WorkConfig.intake_on
"""When intake runs unless ``work.intake_on`` says: every 10 minutes."""
DEFAULT_CAPABILITY = "code"
"""The capability an issue needs when none of its labels is in ``capability_labels``."""


def work_capabilities(config: WorkConfig) -> frozenset[str]:
    """Every capability a work item can need: :data:`DEFAULT_CAPABILITY` and each value of
    the sources' ``capability_labels``."""
    return frozenset({DEFAULT_CAPABILITY, *(capability for source in config.sources
                                            for _, capability in source.capability_labels)})


def token_names(config: WorkConfig) -> frozenset[str]:
    """The names of the fleet secrets holding the sources' forge tokens."""
    return frozenset(source.token for source in config.sources)


def holds_forge_tokens(config: WorkConfig | None, role: str,
                       capabilities: Iterable[str]) -> bool:
    """Whether an agent gets the forge tokens (least privilege): the orchestrator (intake reads
    the forges) and agents with a capability work items need (they push and propose)."""
    if config is None:
        return False
    return role == "orchestrator" or not work_capabilities(config).isdisjoint(capabilities)
