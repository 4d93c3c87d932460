"""One edit of the registry file in place: an agent's ``host`` (``fleet move``).

Like :func:`fleet.control.sealed_edit.set_recipients`, the file is rewritten where the value
stands and nowhere else: comments, key order, quoting and blank lines stay as they are. The
value's place comes from the YAML node tree (its start and end in the text), so a comment
after it, a flow mapping (``{host: x, ...}``) or quotes are kept. An explicit
``health_endpoint`` whose URL names the old host is the host spelled a second time; its host
part is rewritten too (any other health endpoint is left alone). The result is parsed again
and must be the same registry but for those two values, or nothing is returned.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from fleet.core.errors import RegistryError
from fleet.core.registry import Agent, Registry, parse_registry


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of ``key`` in mapping ``node`` (None when absent)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _value_node(text: str, agent: str, field: str) -> yaml.ScalarNode | None:
    """The scalar node of ``wizards.AGENT.FIELD`` in ``text`` (None when not written)."""
    node = _child(_child(_child(yaml.compose(text, Loader=yaml.SafeLoader), "wizards"),
                         agent), field)
    return node if isinstance(node, yaml.ScalarNode) else None


def _spelled(value: str, style: str | None) -> list[str]:
    """How to write ``value`` in place of a scalar of ``style``: that style first, then double
    quotes (a plain ``10`` or ``::1`` would not read back as that string)."""
    if style in ("'", '"'):
        return [f"{style}{value}{style}"]
    return [value, f'"{value}"']


def _replaced(text: str, node: yaml.ScalarNode, spelled: str) -> str:
    if node.start_mark.line != node.end_mark.line:
        raise RegistryError([f"line {node.start_mark.line + 1}: the value spans several "
                             "lines; write it on one line, then run this again"])
    return text[:node.start_mark.index] + spelled + text[node.end_mark.index:]


def moved_health(agent: Agent, host: str) -> str:
    """``agent``'s health endpoint once it runs on ``host``: the URL's host part rewritten when
    it names the agent's current host, else unchanged."""
    parts = urlsplit(agent.health_endpoint)
    if (parts.hostname or "").lower() != agent.host.lower():
        return agent.health_endpoint
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (f"{userinfo}@" if userinfo else "") + (f"[{host}]" if ":" in host else host)
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def set_host(registry: Registry, text: str, agent: str, host: str) -> str:
    """``text`` (the file ``registry`` was read from) with ``wizards.AGENT.host`` set to
    ``host`` (and an explicit ``health_endpoint`` naming the old host moved with it). Raises
    :class:`RegistryError` when the file does not say it on one line each, or the edit would
    change anything else."""
    old = registry.get(agent)
    health = moved_health(old, host)
    fields = [("host", host)]
    explicit = _value_node(text, agent, "health_endpoint") is not None
    if health != old.health_endpoint and explicit:
        fields.append(("health_endpoint", health))
    for field, value in fields:
        node = _value_node(text, agent, field)
        if node is None:
            raise RegistryError([f"{registry.path}: wizards.{agent}.{field} is not written as "
                                 "a plain value"], hint="Write it as `host: NAME` on one "
                                "line, then run this again.")
        for spelled in _spelled(value, node.style):
            edited = _replaced(text, node, spelled)
            try:
                again = parse_registry(edited, registry.path)
            except (RegistryError, yaml.YAMLError):
                continue
            if getattr(again.get(agent), field) == value:
                text = edited
                break
        else:
            raise RegistryError([f"{registry.path}: wizards.{agent}.{field} cannot be set to "
                                 f"{value!r} in place"])
    again = parse_registry(text, registry.path)
    if not explicit:  # the default, derived from the host by the registry
        health = again.get(agent).health_endpoint
    wanted = dataclasses.replace(old, host=host, health_endpoint=health)
    if (again.agents != {**registry.agents, agent: wanted}
            or dataclasses.replace(again, agents=registry.agents) != registry):
        raise RegistryError([f"{registry.path}: setting wizards.{agent}.host would change "
                             "more than that agent's host"],
                            hint="Edit the registry by hand, then deploy.")
    return text


def diff(before: str, after: str, path: Path) -> str:
    """The unified diff of the edit, as ``git diff`` shows it."""
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after.splitlines(keepends=True),
                                        f"a/{path.name}", f"b/{path.name}"))
