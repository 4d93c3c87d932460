"""Run one tool call: check the arguments, build the argv (no shell), run it with a timeout in
its own process group (killed whole when the time is up), capture bounded output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bus.schema import schema_problems
from fleet.tools import PLACEHOLDER_RE, Tool

MAX_OUTPUT = 64 * 1024
SHELL_CHARS = frozenset(";|&$`<>(){}[]*?!~#\\'\"\n\r\t")
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Outcome:
    """How a call ended: ``exit`` code (None when stopped), output, duration, timed out."""

    exit: int | None
    stdout: str
    stderr: str
    duration_ms: float
    timed_out: bool


def argument_problems(tool: Tool, args: Any) -> dict[str, str]:
    """Why ``args`` may not be passed to ``tool`` (empty: they may)."""
    if not isinstance(args, dict):
        return {"args": "is not a JSON object of arguments"}
    problems = schema_problems(tool.args, args)
    for name, value in args.items():
        if isinstance(value, str):
            if SHELL_CHARS.intersection(value) or not value.isprintable():
                problems.setdefault(name, f"{value!r} looks like shell syntax (no ; | & $ ` "
                                          "< > ( ) quotes, globs or control characters)")
            elif value.startswith("-"):
                problems.setdefault(name, f"{value!r} starts with '-' (it would read as an "
                                          "option)")
        elif isinstance(value, list | dict):
            problems.setdefault(name, "is not a string, number or boolean")
    return problems


def argv(tool: Tool, args: dict[str, Any]) -> list[str]:
    """The command line: the fixed argv with ``{name}`` elements replaced by values."""
    if tool.handler:
        return [sys.executable, "-m", "fleet.tools.handler", tool.handler]
    line = []
    for element in tool.command:
        placeholder = PLACEHOLDER_RE.fullmatch(element)
        if placeholder:
            if placeholder.group(1) in args:
                line.append(str(args[placeholder.group(1)]))
        else:
            line.append(element)
    return line


def run(tool: Tool, args: dict[str, Any], cwd: str) -> Outcome:
    """Run ``tool`` with checked ``args`` (also given as JSON on stdin), with a bare
    environment (no secrets; the gateway's import path, for Python handlers)."""
    env = {"PATH": TOOL_PATH, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(path or os.getcwd() for path in sys.path)}
    started = time.monotonic()
    try:
        child = subprocess.Popen(argv(tool, args), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                 env=env, start_new_session=True)
    except OSError as exc:
        return Outcome(127, "", f"cannot start: {exc.strerror}", 0.0, False)
    timed_out = False
    try:
        out, err = child.communicate(json.dumps(args).encode(), timeout=tool.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
    duration = round((time.monotonic() - started) * 1000, 1)
    return Outcome(None if timed_out else child.returncode,
                   out[:MAX_OUTPUT].decode(errors="replace"),
                   err[:MAX_OUTPUT].decode(errors="replace"), duration, timed_out)
