"""Tools an agent declares in the registry and its gateway runs for allowed, signed callers.

A tool is a command with a fixed argv (``{name}`` elements take the value of argument
``name``) or a Python handler (``module:function`` called with the arguments), an argument
schema (JSON Schema, Draft 2020-12), a timeout and the agents allowed to call it. Arguments
are checked against the schema and refused when they look like shell syntax or an option, or
are longer than :data:`MAX_ARG_CHARS`; nothing ever goes through a shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TOOL_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
PLACEHOLDER_RE = re.compile(r"\{([a-z_][a-z0-9_]{0,62})\}")
HANDLER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
MAX_ARG_CHARS = 4096
"""The longest string argument (a rendered argv element stays far below Linux's 128 KiB)."""
EMPTY_ARGS: dict[str, Any] = {"type": "object", "properties": {},
                              "additionalProperties": False}


@dataclass(frozen=True)
class Tool:
    """One declared tool."""

    name: str
    command: tuple[str, ...] = ()
    handler: str | None = None
    args: dict[str, Any] = field(default_factory=lambda: dict(EMPTY_ARGS))
    timeout: float = DEFAULT_TIMEOUT_S
    callers: tuple[str, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The tool as registry YAML spells it."""
        data: dict[str, Any] = {"command": list(self.command)} if self.command else {
            "handler": self.handler}
        data.update(args=self.args, timeout=self.timeout, callers=list(self.callers))
        if self.description:
            data["description"] = self.description
        return data

    def openai(self) -> dict[str, Any]:
        """The tool in OpenAI's chat-completions ``tools`` format."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description or f"the {self.name} tool",
            "parameters": self.args}}
