"""Validation of ``wizards.NAME.tools`` in the registry: one message per problem, naming the
tool and the fix. Argument schemas are JSON Schema (Draft 2020-12), checked with the
``jsonschema`` library; a command's ``{name}`` elements must name arguments that are always
there (required, or with a default)."""

from __future__ import annotations

from typing import Any

from fleet.core.tool_model import (
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


def schema_problems(args: Any) -> list[str]:
    """Why ``args`` is not a usable argument schema: a JSON Schema (Draft 2020-12) of an
    object whose references stay inside it."""
    if not (isinstance(args, dict) and args.get("type") == "object"):
        return ["args must be a JSON Schema of an object (type: object, properties)"]
    # imported here: a registry whose tools declare no arguments (and every `fleet status`)
    # loads without jsonschema's few hundred milliseconds of imports
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(args)
    except SchemaError as exc:
        return [f"args is not a valid JSON Schema (Draft 2020-12): {exc.message} at "
                f"{exc.json_path.replace('$', 'args', 1)}"]
    remote = sorted({ref for ref in references(args) if not ref.startswith("#")})
    if remote:
        return [f"args refers to {', '.join(map(repr, remote))}: only references inside the "
                "schema ('#/$defs/...') are allowed"]
    return []


def references(schema: Any) -> list[str]:
    """Every ``$ref`` and ``$dynamicRef`` in ``schema``, at any depth."""
    if isinstance(schema, list):
        return [ref for item in schema for ref in references(item)]
    if not isinstance(schema, dict):
        return []
    found = [value for key, value in schema.items()
             if key in ("$ref", "$dynamicRef") and isinstance(value, str)]
    return found + [ref for value in schema.values() for ref in references(value)]


def placeholder_problems(command: list[str], args: dict[str, Any]) -> list[str]:
    """Why ``command``'s ``{name}`` elements cannot be filled from ``args``: each names a
    property, and an optional one has a valid ``default`` (an omitted value would otherwise
    shift the next argument into its place)."""
    from jsonschema import Draft202012Validator

    properties = args.get("properties") or {}
    required = args.get("required") or []
    problems = []
    for arg in command:
        placeholder = PLACEHOLDER_RE.fullmatch(arg)
        if not placeholder:
            if "{" in arg:
                problems.append(f"command element {arg!r}: an argument must be a whole element "
                                "{name}, never part of one")
            continue
        name = placeholder.group(1)
        prop = properties.get(name)
        if prop is None:
            problems.append(f"command element {arg!r} names no argument in args.properties")
        elif name not in required and not (isinstance(prop, dict) and "default" in prop):
            problems.append(f"command element {arg!r}: argument {name!r} is optional and has "
                            "no default (an omitted value would shift the next argument into "
                            "its place); add it to args.required or give it a `default`")
        elif name not in required and not Draft202012Validator(prop).is_valid(prop["default"]):
            problems.append(f"command element {arg!r}: the default {prop['default']!r} of "
                            f"argument {name!r} does not match its own schema")
    return problems


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
    found = schema_problems(args)
    problems += found
    if not found:
        problems += placeholder_problems(command or [], args)
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
    return Tool(name=name, command=tuple(command or ()), handler=handler, args=args,
                timeout=float(timeout), callers=tuple(callers), description=description)
