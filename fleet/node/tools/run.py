"""Run one tool call: check the arguments (JSON Schema with ``jsonschema``, then the argv
rules), build the argv (no shell), and run it under a supervisor (:mod:`fleet.node.tools.supervise`)
that kills the whole process tree at the timeout or when the tool exits (``setsid`` cannot
escape it) and keeps at most :data:`MAX_OUTPUT` bytes of each output while reading it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from fleet.core.errors import FleetError
from fleet.core.tool_model import MAX_ARG_CHARS, PLACEHOLDER_RE, Tool
from fleet.node.tools.supervise import decode

MAX_OUTPUT = 64 * 1024
MAX_PROBLEM = 300
SHELL_CHARS = frozenset(";|&$`<>(){}[]*?!~#\\'\"\n\r\t")
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
SUPERVISOR_GRACE_S = 5.0  # beyond the tool's timeout, before the gateway stops the supervisor
SUPERVISOR = str(Path(__file__).with_name("supervise.py"))  # run by path (stdlib only)


class ToolError(FleetError):
    """A call cannot be turned into a command line (an argument the command needs is
    missing, or is not a string, number or boolean)."""


@dataclass(frozen=True)
class Outcome:
    """How a call ended: ``exit`` code (None when stopped or not run), output (at most
    :data:`MAX_OUTPUT` bytes each), its full sizes, duration, timed out, and ``error`` when
    the tool could not run at all."""

    exit: int | None
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool
    error: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0


def render(value: Any) -> str:
    """An argument as an argv element: a string as it is, numbers and booleans as JSON
    writes them (``1.5``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _short(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM else text[:MAX_PROBLEM - 3] + "..."


def value_problems(path: str, value: Any, problems: dict[str, str]) -> None:
    """Add why ``value`` (at ``path``, at any depth) may not be passed: text that looks like
    shell syntax, is over :data:`MAX_ARG_CHARS` characters, or would start with ``-`` (an
    option: strings and negative numbers alike)."""
    if isinstance(value, dict):
        for key, item in value.items():
            value_problems(f"{path}.{key}", item, problems)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value_problems(f"{path}.{index}", item, problems)
    elif isinstance(value, str) and len(value) > MAX_ARG_CHARS:
        problems.setdefault(path, f"is {len(value)} characters long; an argument is at most "
                                  f"{MAX_ARG_CHARS}")
    elif isinstance(value, str) and (SHELL_CHARS.intersection(value) or not value.isprintable()):
        problems.setdefault(path, _short(f"{value!r} looks like shell syntax (no ; | & $ ` < > "
                                         "( ) quotes, globs or control characters)"))
    elif value is not None and render(value).startswith("-"):
        problems.setdefault(path, _short(f"{render(value)!r} starts with '-' (it would read "
                                         "as an option)"))


def argument_problems(tool: Tool, args: Any) -> dict[str, str]:
    """Why ``args`` may not be passed to ``tool`` (empty: they may). Names a problem by the
    argument's path (``name``, ``outer.inner``; ``args`` for the object itself)."""
    if not isinstance(args, dict):
        return {"args": "is not a JSON object of arguments"}
    problems: dict[str, str] = {}
    for name, value in args.items():
        value_problems(str(name), value, problems)
    placed = {match.group(1) for element in tool.command
              if (match := PLACEHOLDER_RE.fullmatch(element))}
    for name in placed & set(args):
        if isinstance(args[name], dict | list) or args[name] is None:
            problems.setdefault(name, "is not a string, number or boolean (it fills an "
                                      "element of the command line)")
    try:
        for error in Draft202012Validator(tool.args).iter_errors(args):
            path = ".".join(str(part) for part in error.absolute_path) or "args"
            problems.setdefault(path, _short(error.message))
    except (SchemaError, Unresolvable) as exc:
        problems.setdefault("args", _short(f"the tool's schema cannot be checked: {exc}"))
    return problems


def argv(tool: Tool, args: dict[str, Any]) -> list[str]:
    """The command line: the fixed argv with each ``{name}`` element replaced by the value of
    argument ``name`` (or its schema's ``default``: an element is never left out, so no
    argument moves into another's place)."""
    if tool.handler:
        return [sys.executable, "-m", "fleet.node.tools.handler", tool.handler]
    properties = tool.args.get("properties") or {}
    line = []
    for element in tool.command:
        placeholder = PLACEHOLDER_RE.fullmatch(element)
        if not placeholder:
            line.append(element)
            continue
        name = placeholder.group(1)
        prop = properties.get(name)
        if name in args:
            value = args[name]
        elif isinstance(prop, dict) and "default" in prop:
            value = prop["default"]
        else:
            raise ToolError(f"tool {tool.name!r}: argument {name!r} is missing and has no "
                            "default")
        if not isinstance(value, str | int | float | bool):
            raise ToolError(f"tool {tool.name!r}: argument {name!r} is not a string, number "
                            "or boolean")
        line.append(render(value))
    return line


def run(tool: Tool, args: dict[str, Any], cwd: str) -> Outcome:
    """Run ``tool`` with checked ``args`` (also given as JSON on stdin) under the supervisor,
    with a bare environment (no secrets; the gateway's import path, for Python handlers)."""
    env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path)}
    command = [sys.executable, "-I", "-S", SUPERVISOR, f"{tool.timeout:g}", str(MAX_OUTPUT),
               "--", *argv(tool, args)]
    started = time.monotonic()

    def failed(error: str) -> Outcome:
        return Outcome(None, "", "", round((time.monotonic() - started) * 1000, 1), False,
                       error)

    try:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, cwd=cwd, env=env)
    except OSError as exc:
        return failed(f"cannot start the tool's supervisor: {exc.strerror or exc}")
    try:
        out, err = child.communicate(json.dumps(args).encode(),
                                     timeout=tool.timeout + SUPERVISOR_GRACE_S)
    except subprocess.TimeoutExpired:
        child.terminate()  # the supervisor kills the tool's tree on its way out
        try:
            child.communicate(timeout=SUPERVISOR_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        return failed(f"the tool's supervisor did not finish within {SUPERVISOR_GRACE_S:g} s "
                      "of the timeout and was stopped")
    duration = round((time.monotonic() - started) * 1000, 1)
    try:
        report = decode(out)
    except ValueError:
        return failed("the tool's supervisor failed: " + _short(
            err.decode(errors="replace").strip().rpartition("\n")[2] or
            f"exit {child.returncode}"))
    if report.error:
        return Outcome(None, "", "", duration, False, report.error)
    return Outcome(report.exit, report.stdout, report.stderr, duration, report.timed_out,
                   None, report.stdout_bytes, report.stderr_bytes)
