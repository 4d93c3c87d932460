"""Validation of ``wizards.NAME.tools`` in the registry: one message per problem, naming the
tool and the fix."""

from __future__ import annotations

import json
from typing import Any

from fleet.tools import (
    DEFAULT_TIMEOUT_S,
    EMPTY_ARGS,
    HANDLER_RE,
    MAX_TIMEOUT_S,
    PLACEHOLDER_RE,
    TOOL_NAME_RE,
    Tool,
)

TOOL_FIELDS = ("command", "handler", "args", "timeout", "callers", "description")


def parse_tools(value: Any) -> tuple[tuple[Tool, ...], list[str]]:
    """Tools from the registry value of ``tools`` and the problems found (each phrased to
    follow ``wizards.NAME.tools:``)."""
    if not isinstance(value, dict):
        return (), ["must be a mapping of tool name to {command or handler, args, timeout, "
                    "callers}"]
    tools, problems = [], []
    for name, spec in value.items():
        found = parse_tool(str(name), spec)
        if isinstance(found, Tool):
            tools.append(found)
        else:
            problems += [f"{name}: {problem}" for problem in found]
    return tuple(tools), problems


def described(args: dict[str, Any]) -> dict[str, Any]:
    """``args`` with a ``description`` on every property (the rule a bad value breaks, as
    the bus's schema checker phrases problems)."""
    properties = {name: {**prop, "description": prop.get("description") or
                         f"a value matching {json.dumps(prop, sort_keys=True)}"}
                  if isinstance(prop, dict) else prop
                  for name, prop in (args.get("properties") or {}).items()}
    return {**args, "properties": properties}


def parse_tool(name: str, spec: Any) -> Tool | list[str]:
    """One tool, or its problems."""
    if not TOOL_NAME_RE.fullmatch(name):
        return ["a tool name is 1-63 lowercase letters, digits, '_' and '-', starting with a "
                "letter"]
    if not isinstance(spec, dict):
        return ["must be a mapping with `command:` (argv) or `handler:` (module:function)"]
    problems = [f"unknown field {key!r}; allowed: {', '.join(TOOL_FIELDS)}"
                for key in spec if key not in TOOL_FIELDS]
    command, handler = spec.get("command"), spec.get("handler")
    args = spec.get("args", EMPTY_ARGS)
    if (command is None) == (handler is None):
        problems.append("give exactly one of `command:` (a list: fixed argv) or `handler:` "
                        "(module:function)")
    if command is not None and not (isinstance(command, list) and command and all(
            isinstance(arg, str) and arg and arg.isprintable() for arg in command)):
        problems.append(f"command {command!r} is not a non-empty list of arguments (argv, "
                        "never a shell line), e.g. [wc, -w, '{path}']")
        command = None
    if handler is not None and not (isinstance(handler, str) and HANDLER_RE.fullmatch(handler)):
        problems.append(f"handler {handler!r} is not module:function")
    if not (isinstance(args, dict) and args.get("type") == "object"):
        problems.append("args must be a JSON Schema of an object (type: object, properties)")
        args = EMPTY_ARGS
    properties = args.get("properties") or {}
    for arg in command or []:
        placeholder = PLACEHOLDER_RE.fullmatch(arg)
        if placeholder and placeholder.group(1) not in properties:
            problems.append(f"command element {arg!r} names no argument in args.properties")
        elif not placeholder and "{" in arg:
            problems.append(f"command element {arg!r}: an argument must be a whole element "
                            "{name}, never part of one")
    timeout = spec.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= MAX_TIMEOUT_S:
        problems.append(f"timeout {timeout!r} is not a number of seconds from 0 to "
                        f"{MAX_TIMEOUT_S:g}")
        timeout = DEFAULT_TIMEOUT_S
    callers = spec.get("callers", [])
    if not (isinstance(callers, list) and all(isinstance(c, str) for c in callers)):
        problems.append(f"callers {callers!r} is not a list of agent names")
        callers = []
    description = spec.get("description", "")
    if not isinstance(description, str):
        problems.append("description must be a string")
        description = ""
    if problems:
        return problems
    return Tool(name=name, command=tuple(command or ()), handler=handler, args=described(args),
                timeout=float(timeout), callers=tuple(callers), description=description)
