"""One renderer for every file the deploy writes to a node: systemd units, env files,
``authorized_keys`` lines, ``config.json`` and the node's registry copy.

Each value is quoted or escaped for its target format here and nowhere else, and a value
that cannot be represented safely raises :class:`RenderError`, never reaching the file. The
registry refuses such values first (:mod:`fleet.core.registry`), naming file, line and field: this
module is the last line, for values that come from elsewhere (secrets, code).

Unit files (``systemd.syntax(7)``): a template's ``{{ value }}`` may hold only plain words
(:data:`BARE_RE`: names, paths, numbers); anything else goes through :func:`unit_word`,
:func:`unit_env` or :func:`unit_command`, which quote it as double-quoted words with ``\\``
and ``"`` escaped, ``%`` specifiers doubled and, in command lines, ``$`` doubled.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import yaml

from fleet.control.templates import read_template
from fleet.core.envfile import format_env
from fleet.core.errors import FleetError
from fleet.core.schedules import on_shape_problem
from fleet.core.validate import (
    AUTHORIZED_KEY_FORM,
    EXEC_PREFIXES,
    authorized_key_problem,
    unsafe_character,
)

if TYPE_CHECKING:
    from jinja2 import Environment

BARE_RE = re.compile(r"[A-Za-z0-9_./:@+,=-]*")
"""What a unit template may hold unquoted: no space, quote, backslash, ``%`` or ``$``."""
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
REGISTRY_COPY_HEADER = ("# Written by the fleet deploy (release phase); edit the controller's "
                        "registry.\n")


class RenderError(FleetError):
    """A value cannot be written safely into a file for a node (it would change the file's
    structure or not arrive as it is)."""

    hint = ("Remove the character or value named from the registry or secrets file, then "
            "check the registry with `fleet registry validate`.")


class UnitWord(str):
    """Text already quoted for a unit file by this module (passes a template as is)."""

    __slots__ = ()


def _checked(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise RenderError(f"{what}: {value!r} is not a string")
    problem = unsafe_character(value)
    if problem:
        raise RenderError(f"{what}: the value holds {problem}; a unit file cannot carry it")
    return value


def unit_word(value: str, *, command: bool = False, what: str = "unit value") -> UnitWord:
    """``value`` as one double-quoted word of a unit file: ``\\`` and ``"`` escaped, ``%``
    doubled (specifiers) and, in a command line, ``$`` doubled (variable expansion)."""
    quoted = _checked(value, what).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return UnitWord('"' + (quoted.replace("$", "$$") if command else quoted) + '"')


def unit_env(name: str, value: str) -> UnitWord:
    """One ``Environment=`` assignment ``"NAME=value"`` (quoted as one word)."""
    if not ENV_NAME_RE.fullmatch(name):
        raise RenderError(f"{name!r} is not an environment variable name")
    return unit_word(f"{name}={value}", what=name)


def unit_command(argv: Sequence[str], what: str = "command") -> UnitWord:
    """A command line for ``ExecStart=``: each argument one quoted word. Refuses an empty
    argv or argument, a lone ``;`` (systemd's command separator) and a program starting
    with one of systemd's flag characters (:data:`EXEC_PREFIXES`)."""
    if not argv:
        raise RenderError(f"{what}: no program to run")
    if not argv[0] or argv[0][0] in EXEC_PREFIXES:
        raise RenderError(f"{what}: the program {argv[0]!r} starts with one of "
                          f"{EXEC_PREFIXES!r}, which systemd reads as flags")
    for arg in argv:
        if arg in ("", ";"):
            raise RenderError(f"{what}: the argument {arg!r} cannot be written to a unit "
                              "(systemd drops an empty word and reads ';' as a separator)")
    return UnitWord(" ".join(unit_word(arg, command=True, what=what) for arg in argv))


def unit_calendar(value: str, what: str = "OnCalendar") -> UnitWord:
    """An ``OnCalendar=`` value. systemd reads it unquoted (only specifiers are expanded), so
    it passes as it is when it holds none of what the unit parser would read: only the
    characters :func:`fleet.core.schedules.on_shape_problem` allows (no quote, backslash,
    ``%``, ``$``, ``#`` or control character), nothing leading or trailing."""
    problem = on_shape_problem(value)
    if problem:
        raise RenderError(f"{what}: {problem}")
    return UnitWord(value)


def _finalize(value: Any) -> str:
    """Every ``{{ value }}`` of a unit template: quoted words pass, plain words and numbers
    pass, anything else is refused."""
    if isinstance(value, UnitWord):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and BARE_RE.fullmatch(value):
        return value
    raise RenderError(f"{value!r} cannot stand unquoted in a unit file; quote it with "
                      "fleet.control.render.unit_word")


UNIT_INCLUDES = ("sandbox.conf.j2",)
"""What unit templates may ``{% include %}``: the one sandbox block (``systemd-analyze
security`` rates it OK) every fleet service runs in, each unit adding its ``ReadWritePaths=``."""


def _include(name: str) -> str | None:
    return read_template(name) if name in UNIT_INCLUDES else None


@cache
def _units() -> Environment:
    """The Jinja2 environment of unit templates (built on first use: what only hashes a
    config, such as ``fleet status``, never imports Jinja2)."""
    from jinja2 import Environment, FunctionLoader, StrictUndefined

    return Environment(loader=FunctionLoader(_include), finalize=_finalize,
                       undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


@cache
def _unit_template(template: str) -> Any:
    """``template`` compiled once per process (every host of a deploy renders the same few)."""
    return _units().from_string(template)


def unit_file(template: str, **values: Any) -> str:
    """A systemd unit from a Jinja2 ``template`` text: every value checked as above."""
    return str(_unit_template(template).render(**values))


def nodectl_launcher(module_dir: str, module: str) -> str:
    """``fleet-nodectl`` on the node: runs ``main()`` of the node helper kept as the module
    ``module`` in ``module_dir``. As a module its compiled code is cached (``__pycache__``,
    written by root on first run); a script is compiled again on every run, and the helper
    runs on every deploy of every host. ``module_dir`` goes last on ``sys.path``: nothing in
    it shadows the standard library."""
    for value, what in ((module_dir, "module folder"), (module, "module name")):
        if not isinstance(value, str) or not BARE_RE.fullmatch(value) or not value:
            raise RenderError(f"{what} {value!r} is not a plain path or name")
    if not module.isidentifier() or keyword.iskeyword(module):
        raise RenderError(f"module name {module!r} is not a Python identifier")
    return (f"#!/usr/bin/python3 -IS\n"
            f'"""The fleet deploy\'s node helper: {module_dir}/{module}.py (written by the '
            f'deploy)."""\n'
            f"import sys\n\n"
            f"sys.path.append({module_dir!r})\n"
            f"from {module} import main  # noqa: E402\n\n"
            f"sys.exit(main())\n")


def env_file(env: Mapping[str, str]) -> str:
    """An ``EnvironmentFile=``: ``NAME="value"`` lines (:func:`fleet.core.envfile.format_env`, which
    refuses what systemd cannot carry with :class:`~fleet.core.envfile.EnvFileError`)."""
    return format_env(env)


def authorized_keys(keys: Iterable[str]) -> list[str]:
    """The ``authorized_keys`` lines for ``keys``: each an OpenSSH public key line (type,
    base64 blob, optional comment; no options), else :class:`RenderError`."""
    lines = []
    for index, key in enumerate(keys):
        problem = authorized_key_problem(key) if isinstance(key, str) else "is not a string"
        if problem:
            raise RenderError(f"authorized_keys entry {index + 1}: {problem} "
                              f"({AUTHORIZED_KEY_FORM})")
        lines.append(key)
    return lines


def authorized_keys_text(keys: Iterable[str]) -> str:
    """:func:`authorized_keys` as file text, one key per line."""
    return "".join(f"{line}\n" for line in authorized_keys(keys))


def config_json(data: Mapping[str, Any]) -> str:
    """``config.json``: sorted, indented JSON (ASCII: ``\\u`` escapes) with finite numbers
    only; its sha256 is the config hash ``/health`` reports."""
    try:
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise RenderError(f"config.json: {exc}") from None


YAML_UNFOLDED = 2**31 - 1
"""The registry copy's line width: no line is folded. PyYAML's Python and C (libyaml)
emitters fold long escaped strings at different columns and write the same text otherwise,
so either renders a node's copy byte for byte alike (a controller without libyaml changes no
node)."""
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def registry_copy(data: Mapping[str, Any]) -> str:
    """The node's registry copy: YAML (control characters escaped by the dumper, no line
    folded) that loads back to exactly ``data``, else :class:`RenderError`. Rendered once per
    host, each a copy of the whole registry: libyaml's emitter and parser where PyYAML has
    them (about ten times faster), else PyYAML's own, which write the same text."""
    text = yaml.dump(dict(data), Dumper=_DUMPER, sort_keys=False, width=YAML_UNFOLDED)
    if yaml.load(text, Loader=_LOADER) != data:  # a safe loader
        raise RenderError("the registry copy does not load back to the registry's values")
    return REGISTRY_COPY_HEADER + text
