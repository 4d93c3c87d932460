"""Load and validate the fleet registry (``registry.yaml``) into typed records.

Every problem is reported as ``FILE:LINE: wizards.NAME.FIELD: what is wrong (what is allowed)``
and all problems of a file are collected before :class:`RegistryError` is raised.

Every string of the registry (mapping keys too, in every section) is checked once, on the
composed YAML node tree, before any field is: no control character (newline, CR, tab, NUL,
ESC, ...), line or paragraph separator, lone surrogate, U+FEFF or noncharacter, and at most
:data:`~fleet.core.validate.MAX_TEXT` characters. So no value can start a new line or directive in
any file the deploy writes to a node (:mod:`fleet.control.render`).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fleet.core import schedules as schedule_rules
from fleet.core.errors import RegistryError
from fleet.core.runtime_config import NESTED_KEYS, runtime_config_problems
from fleet.core.schedules import Schedule, on_problem, prompt_problem
from fleet.core.tool_model import Tool
from fleet.core.tool_spec import parse_tools
from fleet.core.validate import (
    EXEC_PREFIXES,
    MAX_TEXT,
    NOT_A_HOST,
    USER_NAME_FORM,
    USER_NAME_RE,
    authorized_key_problem,
    host_problem,
    unsafe_character,
)
from fleet.core.work_config import (
    INTAKE_SCHEDULE,
    WorkConfig,
    capability_problems,
    check_work,
)

REGISTRY_ENV = "FLEET_REGISTRY"
ROLES = ("orchestrator", "worker")
DEFAULT_GATEWAY_PORT = 8646
DEFAULT_SSH_PORT = 22
DEFAULT_SSH_USER = "root"
# Matched in full (``re.fullmatch``): a trailing newline is not part of a name.
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
CAPABILITY_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
EMBEDDING_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 (RFC 6052)
                      ipaddress.IPv6Network("::ffff:0:0:0/96"))  # IPv4-translated (RFC 2765)

AGENT_FIELDS = (
    "host",
    "role",
    "model",
    "health_endpoint",
    "capabilities",
    "description",
    "gateway_port",
    "ssh_user",
    "ssh_port",
    "soul",
    "region",
    "provider",
    "authorized_keys",
    "config",
    "runtime",
    "tools",
    "state",
    "schedules",
)
REQUIRED_AGENT_FIELDS = ("host", "role", "model")
FLEET_FIELDS = ("name", "ssh_key", "known_hosts", "repo_url", "become", "regions", "secrets",
                "prestage")
FLEET_FLAGS = ("prestage",)
"""``fleet:`` settings that are true or false: ``prestage`` (``fleet deploy`` sends and unpacks
the release on a later rollout stage's hosts while the earlier stages deploy, before its gate;
off when absent)."""
SECRETS_FIELDS = ("file", "recipients")
"""``fleet.secrets``: the fleet's secrets file kept in the repository, sealed with age
(``file``, inside the registry's folder) to the ``recipients`` (``age1...`` public keys)."""
AGE_RECIPIENT_RE = re.compile(r"age1[02-9ac-hj-np-z]{58}")  # Bech32; matched in full
MAX_RECIPIENTS = 64
REGION_FIELDS = ("batch", "max_failures")
"""``fleet.regions`` as a mapping: each region's own rollout settings (workers ``batch`` at a
time, ``max_failures`` allowed in the region)."""
REGION_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
BECOME_METHODS = ("sudo",)
"""``fleet.become``: how a non-root ``ssh_user`` becomes root on the nodes (absent: it logs in
as root, or the deploy runs as ``ssh_user``)."""
TOP_FIELDS = ("wizards", "fleet", "work")
PROVIDER_FIELDS = ("name", "base_url", "api_key")
"""``provider:`` as a mapping: the OpenAI-compatible chat API the agent's runtime calls
(``base_url`` like ``https://openrouter.ai/api/v1``; ``api_key`` names the secret holding the
key, an environment variable name from the secrets file)."""
RUNTIMES = ("builtin", "none")
RUNTIME_FIELDS = ("command", "ship")
"""``runtime:`` as a mapping: the operator's own agent program (``command``: its argv, run with
the agent's environment; ``ship``: files beside the registry it needs, shipped to the node)."""
SECRET_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")
SHIP_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
STATE_FIELDS = ("snapshots",)
"""``state:`` an agent's state dir settings: ``snapshots``, how many snapshots of it each node
keeps (taken before a deploy restarts the agent; ``fleet state``)."""
DEFAULT_SNAPSHOTS = 5
MAX_SNAPSHOTS = 1000  # fleet.node.nodectl.MAX_KEEP
TEXT_LIMITS = {"model": 256, "description": 1024, "provider": 256}
"""The longest value of these agent fields (any other string: ``MAX_TEXT``)."""
MAX_URL = 1024
TEXT_RULE = ("no registry string may hold a control character: newline, CR, tab, NUL, ESC, "
             "U+2028, U+2029, bidirectional controls, zero-width characters and the like")


def printable(text: str) -> str:
    """``text`` for a message: as is, or escaped (``repr`` without quotes) when it holds a
    character :func:`~fleet.core.validate.unsafe_character` refuses."""
    return repr(text)[1:-1] if unsafe_character(text) else text


@dataclass(frozen=True)
class Agent:
    """One agent (``wizards.NAME``) of the fleet, with every default filled in."""

    name: str
    host: str
    role: str
    model: str
    health_endpoint: str
    capabilities: tuple[str, ...] = ()
    description: str = ""
    gateway_port: int = DEFAULT_GATEWAY_PORT
    ssh_user: str = DEFAULT_SSH_USER
    ssh_port: int = DEFAULT_SSH_PORT
    soul: str = ""
    region: str | None = None
    provider: str | None = None
    authorized_keys: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    line: int = 0
    provider_url: str | None = None
    provider_key: str | None = None
    runtime: str = "none"
    runtime_command: tuple[str, ...] = ()
    runtime_ship: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    state_snapshots: int = DEFAULT_SNAPSHOTS
    schedules: tuple[Schedule, ...] = ()

    def tool(self, name: str) -> Tool | None:
        """The declared tool called ``name``, or None."""
        return next((tool for tool in self.tools if tool.name == name), None)

    @property
    def runtime_unit(self) -> str | None:
        """The systemd unit of the agent's runtime (None when it runs none)."""
        return None if self.runtime == "none" else f"fleet-runtime-{self.name}.service"

    @property
    def gateway_url(self) -> str:
        """Base URL of the agent's gateway (bus, agent card, health)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.gateway_port}"

    def to_dict(self) -> dict[str, Any]:
        """The agent as registry YAML would spell it (all defaults explicit)."""
        data: dict[str, Any] = {
            "host": self.host,
            "role": self.role,
            "model": self.model,
            "health_endpoint": self.health_endpoint,
            "capabilities": list(self.capabilities),
            "gateway_port": self.gateway_port,
            "ssh_user": self.ssh_user,
            "ssh_port": self.ssh_port,
            "soul": self.soul,
        }
        optional = {
            "description": self.description,
            "region": self.region,
            "provider": self.provider,
            "authorized_keys": list(self.authorized_keys),
            "config": dict(self.config),
        }
        data.update({key: value for key, value in optional.items() if value})
        if self.provider_url:
            provider = {"name": self.provider, "base_url": self.provider_url,
                        "api_key": self.provider_key}
            data["provider"] = {key: value for key, value in provider.items() if value}
        if self.runtime == "command":
            data["runtime"] = {"command": list(self.runtime_command),
                               "ship": list(self.runtime_ship)}
        elif self.runtime != ("builtin" if self.provider_url else "none"):
            data["runtime"] = self.runtime
        if self.tools:
            data["tools"] = {tool.name: tool.to_dict() for tool in self.tools}
        if self.state_snapshots != DEFAULT_SNAPSHOTS:
            data["state"] = {"snapshots": self.state_snapshots}
        if self.schedules:
            data["schedules"] = {item.name: item.to_dict() for item in self.schedules}
        return data


@dataclass(frozen=True)
class Region:
    """One region of ``fleet.regions``: its name and rollout settings (None: the deploy's)."""

    name: str
    batch: int | None = None
    max_failures: int | None = None

    def to_dict(self) -> dict[str, int]:
        """The region's settings as registry YAML spells them (only those set)."""
        settings = {"batch": self.batch, "max_failures": self.max_failures}
        return {key: value for key, value in settings.items() if value is not None}


@dataclass(frozen=True)
class SealedSecrets:
    """``fleet.secrets``: the sealed secrets file (relative to the registry's folder) and the
    age recipients it is sealed to."""

    file: str
    recipients: tuple[str, ...] = ()
    line: int = 0

    def to_dict(self) -> dict[str, Any]:
        """As registry YAML spells it."""
        return {"file": self.file, "recipients": list(self.recipients)}


@dataclass(frozen=True)
class Registry:
    """A validated registry: fleet-wide settings and the agents in file order."""

    path: Path
    agents: dict[str, Agent]
    name: str = "fleet"
    ssh_key: str | None = None
    known_hosts: str | None = None
    repo_url: str | None = None
    become: str | None = None
    regions: tuple[Region, ...] = ()
    secrets: SealedSecrets | None = None
    prestage: bool = False
    """``fleet.prestage``: pre-stage the release on later rollout stages (``fleet deploy``)."""
    work: WorkConfig | None = None
    """The ``work:`` section (:mod:`fleet.core.work_config`); None when absent."""

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents.values())

    def __len__(self) -> int:
        return len(self.agents)

    def get(self, name: str) -> Agent:
        """The agent called ``name``; :class:`RegistryError` naming the known ones if absent."""
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(self.agents)
            raise RegistryError(
                [f"{self.path}: no agent named {name!r} (agents: {known})"],
                hint="Use one of the agent names listed by `fleet registry show`.",
            ) from None

    def schedules_of(self, agent: Agent) -> list[Schedule]:
        """``agent``'s schedules, the one list the deploy installs and ``fleet work run-now``
        runs: the registry's, and work intake (:data:`INTAKE_SCHEDULE`, at ``work.intake_on``)
        on the orchestrator while the registry has a ``work:`` section."""
        found = list(agent.schedules)
        if self.work is not None and agent.role == "orchestrator":
            found.append(Schedule(INTAKE_SCHEDULE, self.work.intake_on, ""))
        return found

    def schedule_of(self, agent: Agent, name: str) -> Schedule:
        """``agent``'s schedule ``name`` (see :meth:`schedules_of`); :class:`RegistryError`
        naming its schedules if it has none of that name."""
        found = self.schedules_of(agent)
        chosen = next((item for item in found if item.name == name), None)
        if chosen is None:
            known = ", ".join(item.name for item in found) or "none"
            raise RegistryError(
                [f"agent {agent.name!r} has no schedule named {name!r} (its schedules: "
                 f"{known})"],
                hint=f"Name one of {agent.name}'s schedules (`fleet registry show --json`), or "
                     f"add it under wizards.{agent.name}.schedules and deploy.")
        return chosen

    def with_capability(self, capability: str) -> list[Agent]:
        """Agents that declare ``capability``, in registry order."""
        return [agent for agent in self if capability in agent.capabilities]

    def by_role(self, role: str) -> list[Agent]:
        """Agents with ``role``, in registry order."""
        return [agent for agent in self if agent.role == role]

    def region_order(self) -> list[str]:
        """Regions in rollout order: ``fleet.regions`` as written, else the canary's region
        first, then the others by name (agents without a region belong to none)."""
        if self.regions:
            return [region.name for region in self.regions]
        used = {agent.region for agent in self if agent.region}
        canary = [agent.region for agent in self.by_role("orchestrator") if agent.region]
        first = canary[:1]
        return first + sorted(used - set(first))

    def region(self, name: str) -> Region:
        """The settings of region ``name`` (all defaults when ``fleet.regions`` omits it)."""
        return next((region for region in self.regions if region.name == name), Region(name))

    def soul_path(self, agent: Agent) -> Path:
        """The agent's soul file on the controller, inside the registry's folder (checked
        again here: the file may have become a symlink out of it since loading)."""
        problem = soul_problem(self.path, agent.soul)
        if problem:
            raise RegistryError([f"{self.path}:{agent.line}: wizards.{agent.name}.soul: "
                                 f"{agent.soul!r} {problem}"])
        return self.path.parent / agent.soul

    def referenced_files(self) -> tuple[str, ...]:
        """The files beside the registry that it names (relative to its folder): the souls,
        the runtimes' shipped files, ``fleet.ssh_key`` and ``fleet.known_hosts``."""
        named = [agent.soul for agent in self] + [item for agent in self
                                                  for item in agent.runtime_ship]
        return tuple(dict.fromkeys(item for item in (*named, self.ssh_key, self.known_hosts)
                                   if item))

    def sealed_path(self) -> Path | None:
        """The sealed secrets file (``fleet.secrets.file``) on the controller, None when the
        registry names none; checked again here (:func:`sealed_file_problem`: the folder may
        have changed since loading), :class:`RegistryError` naming its line if it may not be
        used."""
        if self.secrets is None:
            return None
        problem = sealed_file_problem(self.path, self.secrets.file, self.referenced_files())
        if problem:
            raise RegistryError([f"{self.path}:{self.secrets.line}: fleet.secrets.file: "
                                 f"{self.secrets.file!r} {problem}"], hint=SEALED_FILE_HINT)
        return self.path.parent / self.secrets.file

    def to_dict(self) -> dict[str, Any]:
        """The whole registry as plain data (for ``--json`` and for writing lab registries)."""
        fleet = {"name": self.name, "ssh_key": self.ssh_key, "known_hosts": self.known_hosts,
                 "repo_url": self.repo_url, "become": self.become,
                 "regions": regions_data(self.regions),
                 "secrets": self.secrets.to_dict() if self.secrets else None,
                 "prestage": self.prestage}
        data: dict[str, Any] = {
            "fleet": {key: value for key, value in fleet.items() if value},
            "wizards": {agent.name: agent.to_dict() for agent in self},
        }
        if self.work is not None:
            data["work"] = self.work.to_dict()
        return data


def regions_data(regions: tuple[Region, ...]) -> list[str] | dict[str, dict[str, int]]:
    """``fleet.regions`` as YAML: a list of names, or a mapping when a region has settings."""
    if any(region.to_dict() for region in regions):
        return {region.name: region.to_dict() for region in regions}
    return [region.name for region in regions]


def resolve_registry_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The registry to use: ``explicit``, else ``$FLEET_REGISTRY``, else ``./registry.yaml``."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(REGISTRY_ENV)
    return Path(from_env) if from_env else Path("registry.yaml")


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Read, parse and validate a registry file; raise :class:`RegistryError` listing problems."""
    registry_path = resolve_registry_path(path)
    try:
        text = registry_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError(
            [f"{registry_path}: registry file not found"],
            hint=f"Pass --registry PATH or set {REGISTRY_ENV}; see README.md for the format.",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([f"{registry_path}: cannot read registry: {exc}"]) from None
    return parse_registry(text, registry_path)


def parse_registry(text: str, path: Path) -> Registry:
    """Validate registry YAML ``text`` (read from ``path``) into a :class:`Registry`."""
    return _Validator(path).validate(text)


class _Validator:
    """Walks the YAML node tree so that each problem carries its line number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self.loader: yaml.SafeLoader | None = None
        self.fleet_keys: set[str] = set()
        self.refused: list[int] = []  # where the strings check_text refused start
        self.sealed_file_node: yaml.Node | None = None

    def problem(self, node: yaml.Node | None, where: str, message: str) -> None:
        if node is not None and any(node.start_mark.index <= index < node.end_mark.index
                                    for index in self.refused):
            return  # a string in it holds a refused character: that problem is reported
        line = f"{node.start_mark.line + 1}:" if node is not None else ""
        location = f" {printable(where)}:" if where else ""
        self.problems.append(f"{self.path}:{line}{location} {message}")

    def fail(self) -> RegistryError:
        return RegistryError(self.problems)

    def value(self, node: yaml.Node) -> Any:
        assert self.loader is not None
        return self.loader.construct_object(node, deep=True)

    def validate(self, text: str) -> Registry:
        root = self.compose(text)
        if root is None:
            self.problems.append(f"{self.path}: registry is empty; it needs a `wizards:` mapping")
            raise self.fail()
        if not isinstance(root, yaml.MappingNode):
            self.problem(root, "", "the registry must be a mapping with a `wizards:` key")
            raise self.fail()
        self.check_text(root, "", set())
        top = self.mapping(root, "", TOP_FIELDS)
        settings = self.fleet_settings(top.get("fleet"))
        wizards = top.get("wizards")
        if wizards is None:
            self.problem(root, "", "missing `wizards:`, the mapping of agent name to agent")
            raise self.fail()
        agents = self.agents(wizards[1])
        if settings.get("secrets"):
            self.check_sealed_file(settings, agents)
        self.check_endpoints_unique(agents)
        if settings.get("regions"):
            self.check_agent_regions(agents, settings["regions"])
        if "become" not in self.fleet_keys:  # a wrong `become` is reported already
            self.check_become(agents)
        self.check_schedule_capabilities(agents)
        work = self.work(top.get("work"), agents)
        if self.problems:
            raise self.fail()
        return Registry(path=self.path, agents=agents, work=work, **settings)

    def compose(self, text: str) -> yaml.Node | None:
        self.loader = yaml.SafeLoader(text)
        try:
            return self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{mark.line + 1}:{mark.column + 1}:" if mark else ""
            self.problems.append(f"{self.path}:{where} YAML syntax error: {exc.problem}")
            raise self.fail() from None
        except yaml.YAMLError as exc:
            self.problems.append(f"{self.path}: YAML syntax error: {exc}")
            raise self.fail() from None

    def check_text(self, node: yaml.Node, where: str, seen: set[int]) -> None:
        """Every string under ``node`` (keys and values, any depth, aliases once) holds no
        character :func:`~fleet.core.validate.unsafe_character` refuses and is at most
        ``MAX_TEXT`` long; each refused one is reported once, naming its place."""
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            text = str(node.value)
            found = unsafe_character(text)
            if found:
                self.problem(node, where, f"{text[:60]!r} holds {found}; remove it ({TEXT_RULE})")
            elif len(text) > MAX_TEXT:
                self.problem(node, where, f"is {len(text)} characters long; the registry "
                             f"allows at most {MAX_TEXT} in any string")
            if found or len(text) > MAX_TEXT:
                self.refused.append(node.start_mark.index)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_text(item, f"{where}[{index}]", seen)
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                dotted = f"{where}.{key}" if where else key
                self.check_text(key_node, dotted, seen)
                self.check_text(value_node, dotted, seen)

    def mapping(
        self, node: yaml.MappingNode, where: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys of ``node`` with their key/value nodes; flags unknown and repeated keys."""
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{where}.{key}" if where else key
            if key in found:
                first = found[key][0].start_mark.line + 1
                self.problem(key_node, dotted, f"repeated key (first defined on line {first})")
                continue
            found[key] = (key_node, value_node)
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"did you mean {close[0]!r}? " if close else ""
                self.problem(key_node, dotted,
                             f"unknown field; {suggestion}allowed: {', '.join(allowed)}")
        return found

    def fleet_settings(self, entry: tuple[yaml.Node, yaml.Node] | None) -> dict[str, Any]:
        if entry is None:
            return {}
        node = entry[1]
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, "fleet", "must be a mapping of fleet-wide settings")
            return {}
        settings: dict[str, Any] = {}
        for key, (_, value_node) in self.mapping(node, "fleet", FLEET_FIELDS).items():
            self.fleet_keys.add(key)
            if key not in FLEET_FIELDS:
                continue
            if key == "regions":
                settings["regions"] = self.regions(value_node)
                continue
            if key == "secrets":
                sealed = self.sealed_secrets(value_node)
                if sealed is not None:
                    settings["secrets"] = sealed
                continue
            value = self.value(value_node)
            if key in FLEET_FLAGS:
                if isinstance(value, bool):
                    settings[key] = value
                else:
                    self.problem(value_node, f"fleet.{key}",
                                 f"{value!r} is not true or false; write `{key}: true` or "
                                 f"`{key}: false`")
                continue
            if value is not None and not isinstance(value, str):
                self.problem(value_node, f"fleet.{key}", f"{value!r} is not a string")
                continue
            if key == "become" and value not in BECOME_METHODS:
                self.problem(value_node, "fleet.become",
                             f"{value!r} is not a way to become root "
                             f"({', '.join(BECOME_METHODS)}); write `become: sudo` for a "
                             "login user with passwordless sudo, or leave it out to log in as "
                             "root")
                continue
            settings[key] = value
        return settings

    def regions(self, node: yaml.Node) -> tuple[Region, ...]:
        """``fleet.regions``: a list of region names in rollout order, or a mapping of region
        name to its settings (``batch``, ``max_failures``), in rollout order."""
        form = ("write `regions: [eu, us]` (rollout order) or a mapping like "
                "`regions: {eu: {batch: 2, max_failures: 0}}`")
        entries: list[tuple[yaml.Node, yaml.Node | None]]
        if isinstance(node, yaml.SequenceNode):
            entries = [(item, None) for item in node.value]
        elif isinstance(node, yaml.MappingNode):
            entries = list(node.value)
        else:
            self.problem(node, "fleet.regions", f"{self.value(node)!r} is not a list or "
                         f"mapping of regions; {form}")
            return ()
        regions: list[Region] = []
        for name_node, settings_node in entries:
            name = self.value(name_node)
            where = f"fleet.regions.{name}"
            if not isinstance(name, str) or not REGION_RE.fullmatch(name):
                self.problem(name_node, "fleet.regions", f"{name!r} is not a region name "
                             "(1-31 lowercase letters, digits and '-', starting with a letter)")
                continue
            if any(region.name == name for region in regions):
                self.problem(name_node, where, "region listed twice; list each region once")
                continue
            regions.append(Region(name, **self.region_settings(settings_node, where)))
        return tuple(regions)

    def sealed_secrets(self, node: yaml.Node) -> SealedSecrets | None:
        """``fleet.secrets``: ``{file: secrets.yaml.age, recipients: [age1..., ...]}``."""
        form = "write `secrets: {file: secrets.yaml.age, recipients: [age1...]}`"
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, "fleet.secrets", f"must be a mapping; {form}")
            return None
        found = self.mapping(node, "fleet.secrets", SECRETS_FIELDS)
        if "file" not in found:
            self.problem(node, "fleet.secrets", f"missing `file:`; {form}")
            return None
        file_node = found["file"][1]
        self.sealed_file_node = file_node
        file = self.value(file_node)
        if not isinstance(file, str) or not file:
            self.problem(file_node, "fleet.secrets.file", f"{file!r} is not a file name")
            return None
        listed: tuple[str, ...] = ()
        if "recipients" in found:
            recipients_node = found["recipients"][1]
            values = self.value(recipients_node)
            if not isinstance(values, list) or len(values) > MAX_RECIPIENTS:
                self.problem(recipients_node, "fleet.secrets.recipients",
                             f"must be a list of at most {MAX_RECIPIENTS} age recipients")
                return None
            bad = [value for value in values
                   if not isinstance(value, str) or not AGE_RECIPIENT_RE.fullmatch(value)]
            if bad:
                self.problem(recipients_node, "fleet.secrets.recipients",
                             f"{str(bad[0])[:80]!r} is not an age recipient (age1 and 58 "
                             "Bech32 characters); `age-keygen -y FILE` prints one")
                return None
            listed = tuple(dict.fromkeys(values))
        return SealedSecrets(file=file, recipients=listed, line=file_node.start_mark.line + 1)

    def check_sealed_file(self, settings: dict[str, Any], agents: dict[str, Agent]) -> None:
        """``fleet.secrets.file`` against the folder and every file the registry names
        (:func:`sealed_file_problem`); a refused one is dropped from ``settings``."""
        sealed: SealedSecrets = settings["secrets"]
        named = Registry(path=self.path, agents=agents, **settings).referenced_files()
        problem = sealed_file_problem(self.path, sealed.file, named)
        if problem:
            self.problem(self.sealed_file_node, "fleet.secrets.file",
                         f"{sealed.file!r} {problem}; {SEALED_FILE_HINT}")
            del settings["secrets"]

    def region_settings(self, node: yaml.Node | None, where: str) -> dict[str, int]:
        """One region's settings: ``batch`` (1 or more), ``max_failures`` (0 or more)."""
        if node is None or (isinstance(node, yaml.ScalarNode) and self.value(node) is None):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "must be a mapping of region settings "
                         f"({', '.join(REGION_FIELDS)}), e.g. {{batch: 2, max_failures: 0}}")
            return {}
        settings: dict[str, int] = {}
        for key, (_, value_node) in self.mapping(node, where, REGION_FIELDS).items():
            value = self.value(value_node)
            least = 1 if key == "batch" else 0
            if key not in REGION_FIELDS:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                self.problem(value_node, f"{where}.{key}",
                             f"{value!r} is not a whole number of {least} or more")
                continue
            settings[key] = value
        return settings

    def check_agent_regions(self, agents: dict[str, Agent], regions: tuple[Region, ...]) -> None:
        """With ``fleet.regions`` set, every agent names one of them."""
        names = [region.name for region in regions]
        listed = ", ".join(names)
        for agent in agents.values():
            where = f"{self.path}:{agent.line}: wizards.{agent.name}.region:"
            if agent.region is None:
                self.problems.append(f"{where} missing; the fleet lists regions ({listed}): "
                                     "give the agent `region: NAME` with one of them")
            elif agent.region not in names:
                close = difflib.get_close_matches(agent.region, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.problems.append(f"{where} {agent.region!r} is not in fleet.regions "
                                     f"({listed}); {hint}fix the name or add it to "
                                     "fleet.regions")

    def agents(self, node: yaml.Node) -> dict[str, Agent]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, "wizards", "must be a mapping of agent name to agent fields")
            return {}
        if not node.value:
            self.problem(node, "wizards", "no agents defined; add at least one agent")
            return {}
        agents: dict[str, Agent] = {}
        for key_node, value_node in node.value:
            name = str(key_node.value)
            where = f"wizards.{name}"
            if name in agents:
                first = agents[name].line
                self.problem(key_node, where,
                             f"duplicate agent name (first defined on line {first})")
                continue
            if not NAME_RE.fullmatch(name):
                self.problem(key_node, where, "agent name must be 1-31 characters of lowercase "
                             "letters, digits and '-', starting with a letter")
            agent = self.agent(name, key_node, value_node)
            if agent is not None:
                agents[name] = agent
        return agents

    def agent(self, name: str, key_node: yaml.Node, node: yaml.Node) -> Agent | None:
        where = f"wizards.{name}"
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "must be a mapping of agent fields (host, role, model, ...)")
            return None
        fields = self.mapping(node, where, AGENT_FIELDS)
        before = len(self.problems)
        for required in REQUIRED_AGENT_FIELDS:
            if required not in fields:
                self.problem(key_node, f"{where}.{required}", "missing required field")
        values = {key: (self.value(v), v) for key, (_, v) in fields.items() if key in AGENT_FIELDS}
        checked = _AgentFields(self, where, values)
        host = checked.host()
        port = checked.port("gateway_port", DEFAULT_GATEWAY_PORT)
        agent_data: dict[str, Any] = {
            "name": name,
            "host": host,
            "role": checked.role(),
            "model": checked.model(),
            "capabilities": checked.string_list("capabilities", CAPABILITY_RE),
            "description": checked.string("description", ""),
            "gateway_port": port,
            "ssh_user": checked.user("ssh_user", DEFAULT_SSH_USER),
            "ssh_port": checked.port("ssh_port", DEFAULT_SSH_PORT),
            "soul": checked.soul(f"souls/{name}.md"),
            "region": checked.string("region", None),
            **checked.provider(),
            "authorized_keys": checked.authorized_keys(),
            "config": checked.config(),
            "line": key_node.start_mark.line + 1,
        }
        default_health = f"http://{host}:{port}/health" if host else ""
        agent_data["health_endpoint"] = checked.url("health_endpoint", default_health)
        agent_data.update(checked.runtime(bool(agent_data["provider_url"])))
        agent_data["tools"] = checked.tools()
        agent_data["state_snapshots"] = checked.state()
        agent_data["schedules"] = checked.schedules(agent_data["runtime"])
        if len(self.problems) > before:
            return None
        return Agent(**agent_data)

    def check_become(self, agents: dict[str, Agent]) -> None:
        """A login user other than root deploys only through ``fleet.become``."""
        for agent in agents.values():
            if agent.ssh_user != DEFAULT_SSH_USER:
                self.problems.append(
                    f"{self.path}:{agent.line}: wizards.{agent.name}.ssh_user: "
                    f"{agent.ssh_user!r} is not root and the fleet sets no `become`; add "
                    "`become: sudo` under `fleet:` (the user needs passwordless sudo)")

    def check_schedule_capabilities(self, agents: dict[str, Agent]) -> None:
        """A schedule's ``capability`` is declared by another agent (its runtime routes the
        request there, never to itself)."""
        for agent in agents.values():
            for item in agent.schedules:
                if item.capability is None:
                    continue
                others = [other.name for other in agents.values()
                          if item.capability in other.capabilities and other is not agent]
                if not others:
                    self.problems.append(
                        f"{self.path}:{item.line}: wizards.{agent.name}.schedules.{item.name}"
                        f".capability: no other agent declares {item.capability!r}; add it to "
                        "an agent's `capabilities:` or drop `capability:` (then the agent "
                        "answers the prompt itself)")

    def work(self, entry: tuple[yaml.Node, yaml.Node] | None,
             agents: dict[str, Agent]) -> WorkConfig | None:
        """The ``work:`` section (:func:`~fleet.core.work_config.check_work`), each of its
        ``capability_labels`` declared by some agent."""
        if entry is None:
            return None
        config = check_work(entry[1], self.value, self.problem, self.mapping)
        if config is None:
            return None
        declared = [capability for agent in agents.values() for capability in agent.capabilities]
        for line, message in capability_problems(config, declared):
            self.problems.append(f"{self.path}:{line}: {message}")
        for agent in agents.values():  # the deploy adds the orchestrator's intake by this name
            clash = next((item for item in agent.schedules if item.name == INTAKE_SCHEDULE),
                         None)
            if clash is not None and agent.role == "orchestrator":
                self.problems.append(
                    f"{self.path}:{clash.line}: wizards.{agent.name}.schedules."
                    f"{INTAKE_SCHEDULE}: the name is the work intake's, which the orchestrator "
                    "runs while the registry has a work: section; rename this schedule "
                    "(work.intake_on sets the intake's calendar)")
        return config

    def check_endpoints_unique(self, agents: dict[str, Agent]) -> None:
        seen: dict[tuple[str, int], Agent] = {}
        for agent in agents.values():
            key = (host_identity(agent.host), agent.gateway_port)
            other = seen.get(key)
            if other is not None:
                self.problems.append(
                    f"{self.path}:{agent.line}: wizards.{agent.name}.host: {agent.host}:"
                    f"{agent.gateway_port} is already used by {other.name} (line {other.line}); "
                    "give each agent its own host or gateway_port"
                )
            else:
                seen[key] = agent


class _AgentFields:
    """Type checks for one agent's field values, reporting through the validator."""

    def __init__(self, validator: _Validator, where: str,
                 values: dict[str, tuple[Any, yaml.Node]]) -> None:
        self.validator = validator
        self.where = where
        self.values = values

    def bad(self, key: str, message: str) -> None:
        self.validator.problem(self.values[key][1], f"{self.where}.{key}", message)

    def string(self, key: str, default: str | None) -> Any:
        if key not in self.values:
            return default
        value = self.values[key][0]
        if not isinstance(value, str) or not value.strip():
            self.bad(key, f"{value!r} is not a non-empty string")
            return default
        limit = TEXT_LIMITS.get(key, MAX_TEXT)
        if len(value) > limit:
            self.bad(key, f"is {len(value)} characters long; at most {limit} allowed")
            return default
        return value

    def model(self) -> str:
        """``model``: what the runtime names to its provider; never starts with ``-`` (it
        must not read as an option) or whitespace, nor ends with whitespace."""
        value = self.string("model", "")
        if value and (value[0] == "-" or value != value.strip()):
            self.bad("model", f"{value!r} starts with '-' or has spaces at either end; write "
                     "the model's name as its provider spells it, e.g. google/gemma-4-31b-it")
            return ""
        return str(value)

    def user(self, key: str, default: str) -> str:
        value = self.string(key, default)
        if value is not default and not USER_NAME_RE.fullmatch(value):
            self.bad(key, f"{value!r} is not a user name ({USER_NAME_FORM})")
            return default
        return str(value)

    def soul(self, default: str) -> str:
        """A soul path relative to the registry's folder that stays inside it: no absolute
        path, no ``..`` out of it, no symlink leading out of it."""
        value = self.string("soul", default)
        if value is default:
            return str(default)
        problem = soul_problem(self.validator.path, value)
        if problem:
            self.bad("soul", f"{value!r} {problem}; write a path relative to the registry's "
                     "folder, inside it (e.g. souls/NAME.md)")
            return default
        return str(value)

    def host(self) -> str:
        if "host" not in self.values:
            return ""
        value = self.values["host"][0]
        problem = host_problem(value) if isinstance(value, str) else NOT_A_HOST
        if not problem:
            return str(value)
        if problem == NOT_A_HOST:
            problem += " (write just the name or address, no scheme, port or path)"
        self.bad("host", f"{value!r} {problem}")
        return ""

    def role(self) -> str:
        if "role" not in self.values:
            return ""
        value = self.values["role"][0]
        if value not in ROLES:
            close = difflib.get_close_matches(str(value), ROLES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            self.bad("role", f"{value!r} is not a role ({', '.join(ROLES)}){hint}")
            return ""
        return str(value)

    def port(self, key: str, default: int) -> int:
        if key not in self.values:
            return default
        value = self.values[key][0]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.bad(key, f"{value!r} is not a port number (1-65535)")
            return default
        return value

    def string_list(self, key: str, pattern: re.Pattern[str] | None) -> tuple[str, ...]:
        if key not in self.values:
            return ()
        value = self.values[key][0]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.bad(key, f"{value!r} is not a list of strings (write [a, b] or one '- item' "
                     "per line)")
            return ()
        if pattern is not None:
            for item in value:
                if not pattern.fullmatch(item):
                    self.bad(key, f"{item!r} is not a valid name (lowercase letters, digits, "
                             "'.', '_' and '-')")
        return tuple(value)

    def authorized_keys(self) -> tuple[str, ...]:
        """``authorized_keys``: OpenSSH public key lines, nothing else (no options such as
        ``command=``)."""
        keys = self.string_list("authorized_keys", None)
        for index, line in enumerate(keys):
            problem = authorized_key_problem(line)
            if problem:
                self.bad("authorized_keys", f"entry {index + 1} {line[:40]!r}... {problem}; "
                         "paste the public key line (e.g. ~/.ssh/id_ed25519.pub)")
        return keys

    def config(self) -> dict[str, Any]:
        if "config" not in self.values:
            return {}
        value = self.values["config"][0]
        scalars = (str, int, float, bool)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, scalars) or k in NESTED_KEYS)
            for k, v in value.items()
        ):
            self.bad("config", "must be a mapping of setting name to a string, number or boolean")
            return {}
        for name, item in value.items():
            if isinstance(item, dict):  # the runtime's own mapping: runtime_config checks it
                continue
            if isinstance(item, float) and not math.isfinite(item):
                self.bad("config", f"{name}: {item!r} is not a finite number (config.json "
                         "holds JSON numbers only)")
                return {}
        for problem in runtime_config_problems(value):
            self.bad("config", problem)
        return dict(value)

    def provider(self) -> dict[str, Any]:
        """``provider``: free text (a label), or a mapping naming the chat API to call."""
        found: dict[str, Any] = {"provider": None, "provider_url": None, "provider_key": None}
        if "provider" not in self.values or not isinstance(self.values["provider"][0], dict):
            found["provider"] = self.string("provider", None)
            return found
        value = self.values["provider"][0]
        unknown = sorted(set(map(str, value)) - set(PROVIDER_FIELDS))
        if unknown:
            self.bad("provider", f"unknown field {unknown[0]!r}; allowed: "
                     f"{', '.join(PROVIDER_FIELDS)}")
        name, url, key = value.get("name"), value.get("base_url"), value.get("api_key")
        if name is not None and (not isinstance(name, str) or not name.strip()
                                 or len(name) > TEXT_LIMITS["provider"]):
            self.bad("provider", f"name {name!r} is not a non-empty string of at most "
                     f"{TEXT_LIMITS['provider']} characters")
        if _url_problem(url):
            self.bad("provider", f"base_url {url!r} is not a valid URL: {_url_problem(url)} "
                     "(the OpenAI-compatible API root, e.g. https://openrouter.ai/api/v1)")
        if key is not None and not (isinstance(key, str) and SECRET_NAME_RE.fullmatch(key)):
            self.bad("provider", f"api_key {key!r} is not the name of a secret (an "
                     "environment variable name like OPENROUTER_API_KEY from the secrets "
                     "file; never the key itself)")
        found.update(provider=name if isinstance(name, str) else None,
                     provider_url=url if isinstance(url, str) else None,
                     provider_key=key if isinstance(key, str) else None)
        return found

    def runtime(self, has_provider: bool) -> dict[str, Any]:
        """``runtime``: builtin (the default with a provider), none (the default without),
        or ``{command: [argv], ship: [paths]}``."""
        default = "builtin" if has_provider else "none"
        if "runtime" not in self.values:
            return {"runtime": default}
        value = self.values["runtime"][0]
        if isinstance(value, str):
            if value not in RUNTIMES:
                self.bad("runtime", f"{value!r} is not a runtime ({', '.join(RUNTIMES)}, or a "
                         "mapping with `command:` and `ship:` for your own program)")
                return {"runtime": default}
            if value == "builtin" and not has_provider:
                self.bad("runtime", "the built-in runtime needs a model to call; give the "
                         "agent `provider: {base_url: ..., api_key: SECRET_NAME}`")
            return {"runtime": value}
        if not isinstance(value, dict):
            self.bad("runtime", f"{value!r} is not builtin, none or a mapping with `command:`")
            return {"runtime": default}
        unknown = sorted(set(map(str, value)) - set(RUNTIME_FIELDS))
        if unknown:
            self.bad("runtime", f"unknown field {unknown[0]!r}; allowed: "
                     f"{', '.join(RUNTIME_FIELDS)}")
        command, ship = value.get("command"), value.get("ship") or []
        if not (isinstance(command, list) and command
                and all(isinstance(arg, str) and arg and "\0" not in arg for arg in command)):
            self.bad("runtime", f"command {command!r} is not a non-empty list of arguments "
                     "(argv, run without a shell), e.g. [python3, runtime/agent.py]")
            command = []
        if command and command[0][0] in EXEC_PREFIXES:
            self.bad("runtime", f"command's program {command[0]!r} starts with one of "
                     f"{EXEC_PREFIXES!r}, which systemd reads as flags (+ would run it as "
                     "root); name the program itself, e.g. python3")
            command = []
        if ";" in command:
            self.bad("runtime", "command holds an argument ';', which systemd reads as the end "
                     "of a command line; drop it (argv runs without a shell)")
            command = []
        if not (isinstance(ship, list) and all(isinstance(item, str) for item in ship)):
            self.bad("runtime", f"ship {ship!r} is not a list of file paths")
            ship = []
        for item in ship:
            if not SHIP_PATH_RE.fullmatch(item) or ".." in item.split("/"):
                self.bad("runtime", f"ship path {item!r} is not a relative path inside the "
                         "registry's folder (letters, digits, '.', '_', '-' and '/')")
            elif not (self.validator.path.parent / item).is_file():
                self.bad("runtime", f"ship path {item!r} is not a file beside the registry")
        return {"runtime": "command", "runtime_command": tuple(command),
                "runtime_ship": tuple(ship)}

    def state(self) -> int:
        """``state: {snapshots: N}``: how many state snapshots the node keeps (1-1000)."""
        if "state" not in self.values:
            return DEFAULT_SNAPSHOTS
        value = self.values["state"][0]
        if not isinstance(value, dict):
            self.bad("state", f"{value!r} is not a mapping; write e.g. `state: {{snapshots: "
                     f"{DEFAULT_SNAPSHOTS}}}`")
            return DEFAULT_SNAPSHOTS
        unknown = sorted(set(map(str, value)) - set(STATE_FIELDS))
        if unknown:
            self.bad("state", f"unknown field {unknown[0]!r}; allowed: "
                     f"{', '.join(STATE_FIELDS)}")
            return DEFAULT_SNAPSHOTS
        count = value.get("snapshots", DEFAULT_SNAPSHOTS)
        if isinstance(count, bool) or not isinstance(count, int) \
                or not 1 <= count <= MAX_SNAPSHOTS:
            self.validator.problem(self.values["state"][1], f"{self.where}.state.snapshots",
                                   f"{count!r} is not a number of snapshots to keep "
                                   f"(1-{MAX_SNAPSHOTS})")
            return DEFAULT_SNAPSHOTS
        return count

    def schedules(self, runtime: str) -> tuple[Schedule, ...]:
        """``schedules``: name -> ``{on, prompt, capability?}`` (:mod:`fleet.core.schedules`),
        each problem at the line of the schedule or field it is about."""
        if "schedules" not in self.values:
            return ()
        value, node = self.values["schedules"]
        if not isinstance(node, yaml.MappingNode):
            self.bad("schedules", f"{value!r} is not a mapping of schedule name to "
                     "{on: CALENDAR, prompt: TEXT}; write e.g. `schedules: {nightly: {on: "
                     "\"*-*-* 02:00:00\", prompt: \"...\"}}`")
            return ()
        found: list[Schedule] = []
        for key_node, entry_node in node.value:
            # the key as written: YAML 1.1 would read a bare `on` or `yes` as a boolean
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{self.where}.schedules.{name}"
            if not isinstance(name, str) or not schedule_rules.NAME_RE.fullmatch(name):
                self.validator.problem(key_node, where, f"{name!r} is not a schedule name "
                                       f"({schedule_rules.NAME_FORM})")
                continue
            if any(item.name == name for item in found):
                self.validator.problem(key_node, where, "repeated schedule name")
                continue
            item = self.schedule(name, key_node, entry_node, where, runtime)
            if item is not None:
                found.append(item)
        return tuple(found)

    def schedule(self, name: str, key_node: yaml.Node, node: yaml.Node, where: str,
                 runtime: str) -> Schedule | None:
        """One schedule's fields, each checked where it is written."""
        validator = self.validator
        if not isinstance(node, yaml.MappingNode):
            validator.problem(node, where, "must be a mapping with `on:` and `prompt:` (and "
                              "optionally `capability:`)")
            return None
        fields = validator.mapping(node, where, schedule_rules.FIELDS)
        before = len(validator.problems)
        for required in schedule_rules.REQUIRED:
            if required not in fields:
                validator.problem(key_node, f"{where}.{required}", "missing required field")
        values = {key: (validator.value(v), v) for key, (_, v) in fields.items()
                  if key in schedule_rules.FIELDS}
        checks = {"on": on_problem, "prompt": prompt_problem}
        for key, check in checks.items():
            if key in values:
                problem = check(values[key][0])
                if problem:
                    validator.problem(values[key][1], f"{where}.{key}", problem)
        capability = values.get("capability", (None, None))[0]
        if "capability" in values:
            if not isinstance(capability, str) or not CAPABILITY_RE.fullmatch(capability):
                validator.problem(values["capability"][1], f"{where}.capability",
                                  f"{capability!r} is not a capability name (lowercase "
                                  "letters, digits, '.', '_' and '-')")
            elif runtime != "builtin":
                validator.problem(values["capability"][1], f"{where}.capability",
                                  f"the agent's runtime is {runtime!r}, and only the built-in "
                                  "runtime routes a request by capability; give the agent a "
                                  "provider (the built-in runtime) or drop `capability:`")
        if len(validator.problems) > before:
            return None
        return Schedule(name=name, on=values["on"][0], prompt=values["prompt"][0],
                        capability=capability, line=key_node.start_mark.line + 1)

    def tools(self) -> tuple[Tool, ...]:
        """``tools``: name -> {command or handler, args, timeout, callers, description}."""
        if "tools" not in self.values:
            return ()
        tools, problems = parse_tools(self.values["tools"][0])
        for problem in problems:
            self.bad("tools", problem)
        return tools

    def url(self, key: str, default: str) -> str:
        if key not in self.values:
            return default
        value = self.values[key][0]
        problem = _url_problem(value)
        if problem:
            self.bad(key, f"{value!r} is not a valid health URL: {problem} "
                     "(expected like http://HOST:8646/health)")
            return default
        return str(value)


def soul_problem(registry_path: Path, soul: str) -> str:
    """Why ``soul`` may not be used as a soul path of the registry at ``registry_path`` (empty
    when it may): it must be relative and resolve, symlinks followed, inside the registry's
    folder."""
    if "\0" in soul:
        return "contains a NUL character"
    if Path(soul).is_absolute():
        return "is an absolute path"
    folder = registry_path.parent.resolve()
    resolved = (folder / soul).resolve()
    if not resolved.is_relative_to(folder) or resolved == folder:
        return f"resolves outside the registry's folder {folder} (to {resolved})"
    return ""


SEALED_SUFFIX = ".age"
SEALED_FILE_HINT = ("name a new or existing age file of its own inside the registry's folder, "
                    "e.g. `file: secrets.yaml.age`")


def sealed_file_problem(registry_path: Path, file: str, named: Iterable[str] = ()) -> str:
    """Why ``file`` may not be the sealed secrets file of the registry at ``registry_path``
    (empty when it may). The sealing commands replace it, so it must be a file of its own: a
    relative path ending in ``.age`` that resolves inside the registry's folder, not under
    ``.git``, in an existing folder, not the registry itself nor any file the registry names
    (``named``: souls, shipped files, keys), and a regular file (not a symlink, folder or
    FIFO) or absent."""
    problem = soul_problem(registry_path, file)
    if problem:
        return problem
    if ".." in Path(file).parts:
        return "holds a '..' part: name the file by its path inside the registry's folder"
    if not file.endswith(SEALED_SUFFIX) or file.endswith("/"):
        return (f"does not end in {SEALED_SUFFIX!r}: the sealed file is an age file "
                "(fleet secrets encrypt replaces it)")
    folder = registry_path.parent.resolve()
    target = folder / file
    try:
        resolved = target.resolve()
        if ".git" in Path(file).parts or ".git" in resolved.relative_to(folder).parts:
            return "is inside .git"
        if resolved == registry_path.resolve():
            return "is the registry file itself"
        for other in named:
            if resolved == (folder / other).resolve():
                return f"is {other!r}, a file the registry names (a soul, key or shipped file)"
        if not resolved.parent.is_dir():
            return f"is in a folder that does not exist ({resolved.parent})"
        info = target.lstat()
    except FileNotFoundError:
        return ""  # not sealed yet: the first `fleet secrets encrypt` or edit makes it
    except OSError as exc:
        return f"cannot be checked ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink: the sealed file must be a regular file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a folder, FIFO or device)"
    return ""


def host_identity(host: str) -> str:
    """The one spelling of ``host`` for comparing servers: an IP address in its compressed
    form (an IPv6 address carrying an IPv4 one, IPv4-mapped, IPv4-translated, NAT64
    64:ff9b::/96 or 6to4 2002::/16, as that IPv4 address; any loopback address as
    ``loopback``: one machine), a host name in lower case."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower().rstrip(".")
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in prefix for prefix in EMBEDDING_PREFIXES):
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        else:
            address = address.ipv4_mapped or address.sixtofour or address
    return "loopback" if address.is_loopback else str(address)


def is_host(value: str) -> bool:
    """Whether ``value`` is an IP address or a host name (:func:`host_problem`)."""
    return not host_problem(value)


def _url_problem(value: Any) -> str:
    if not isinstance(value, str):
        return "not a string"
    if len(value) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if unsafe_character(value) or re.search(r"\s", value):
        return "holds a space or control character (percent-encode it, e.g. %20)"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        return "scheme must be http or https"
    if not parts.hostname:
        return "no host"
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "bad port"
    return ""
