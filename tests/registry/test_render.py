"""Every file the deploy writes to a node (:mod:`fleet.control.render`), for every registry the
validator accepts: units read back (``unit_syntax``, systemd's rules) to exactly the intended
keys and values, the env file through :mod:`fleet.core.envfile`'s parser, ``authorized_keys`` line
by line, ``config.json`` and the registry copy loaded back. And a control character in any
string of the registry is refused, naming the field."""

from __future__ import annotations

import ast
import base64
import json
import keyword
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploys.context import AgentContext
from deploys.services import runtime_unit_text, unit_text
from fleet.control import render
from fleet.core.envfile import parse_env_entries
from fleet.core.errors import RegistryError
from fleet.core.registry import Registry, parse_registry, printable
from fleet.core.validate import KEY_TYPES, unsafe_character
from tests.registry import unit_syntax

REGISTRY = Path(tempfile.gettempdir()) / "fleet-render-test" / "registry.yaml"
HOSTILE = [*"\"'%$\\` ;#=&|<>{}()*?!~@+-", "%%", "$$", "\\\\", "%n", "${X}", "$HOME", "é", "✓",
           "日本", "\U0001f600", "\u200d"]
REFUSED = ["\n", "\r", "\0", "\x1b", "\u2028", "\t", "\x85", "\ud800", "\ufeff", "\uffff"]
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Hostile text: Unicode and the characters systemd, shells and YAML interpret; now and then
# (1 in 20) also a character the registry must refuse, which then must not reach any file.
safe_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.characters(
    blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")).filter(
        lambda c: not unsafe_character(c))),
                     min_size=1, max_size=12).map("".join)
poisoned_text = st.tuples(safe_text, st.sampled_from(REFUSED), safe_text).map("".join)
text = st.integers(0, 19).flatmap(lambda n: poisoned_text if n == 0 else safe_text)


def key_line(kind: str, data: bytes, comment: str) -> str:
    """An OpenSSH public key line of ``kind`` whose blob names it."""
    blob = len(kind).to_bytes(4, "big") + kind.encode() + data
    return f"{kind} {base64.b64encode(blob).decode()}" + (f" {comment}" if comment else "")


keys = st.lists(st.builds(key_line, st.sampled_from(KEY_TYPES), st.binary(min_size=8,
                                                                         max_size=64),
                          st.from_regex(r"([!-~]([ -~]{0,20}[!-~])?)?", fullmatch=True)),
                max_size=3)
scalars = st.one_of(text, st.integers(), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def agents(draw: st.DrawFn) -> dict[str, Any]:
    """One agent's registry entry with hostile values in every free-text field."""
    agent: dict[str, Any] = {"host": "192.0.2.10", "role": "orchestrator", "model": draw(text),
                             "description": draw(text), "region": draw(text),
                             "authorized_keys": draw(keys),
                             "config": draw(st.dictionaries(text, scalars, max_size=4))}
    if draw(st.booleans()):
        agent["provider"] = {"name": draw(text), "api_key": "MODEL_KEY",
                             "base_url": "http://model.example:8650/" + draw(text)}
    if draw(st.booleans()) or "provider" not in agent:
        program = draw(st.sampled_from(["python3", "/usr/bin/env", "agent bin/ü"]))
        agent["runtime"] = {"command": [program, *draw(st.lists(text, max_size=4))]}
    return agent


def load(data: dict[str, Any]) -> Registry | None:
    """The registry of ``data`` (dumped as YAML, as an operator would write it), or None
    when the validator refuses it."""
    try:
        return parse_registry(yaml.safe_dump(data, allow_unicode=True), REGISTRY)
    except RegistryError:
        return None


def context(registry: Registry) -> AgentContext:
    agent = registry.get("a")
    return AgentContext(agent=agent, registry=registry, soul_source=REGISTRY.parent / "x.md")


def shape(text_: str) -> list[tuple[str, str]]:
    """The (section, key) sequence of a unit: what directives it holds."""
    return [(section, key) for section, key, _ in unit_syntax.unit_entries(text_)]


PLAIN = context(parse_registry(yaml.safe_dump({"wizards": {"a": {
    "host": "192.0.2.10", "role": "orchestrator", "model": "m",
    "provider": {"base_url": "http://model.example:8650/v1", "api_key": "MODEL_KEY"},
    "runtime": {"command": ["python3", "x"]}}}}), REGISTRY))


@SETTINGS
@given(agents())
def test_every_accepted_registry_renders_units_that_read_back_exactly(data: dict) -> None:
    registry = load({"wizards": {"a": data}})
    if registry is None:
        return
    ctx = context(registry)
    agent = ctx.agent
    runtime = runtime_unit_text(ctx)
    assert shape(runtime) == shape(runtime_unit_text(PLAIN))  # no other directive
    entries = unit_syntax.unit_entries(runtime)
    env = [pair for section, key, value in entries if key == "Environment"
           for pair in unit_syntax.environment(value)]
    assert env == [("PYTHONPATH", "/opt/fleet/current/site"), ("FLEET_MODEL", agent.model),
                   ("FLEET_PROVIDER_URL", agent.provider_url or ""),
                   ("FLEET_PROVIDER_KEY_ENV", agent.provider_key or ""),
                   ("FLEET_GATEWAY_URL", "http://127.0.0.1:8646")]
    exec_start = [value for _, key, value in entries if key == "ExecStart"]
    expected = (list(agent.runtime_command) if agent.runtime == "command"
                else ["/usr/bin/python3", "-m", "fleet.runtime"])
    assert [unit_syntax.command(value) for value in exec_start] == [expected]
    assert shape(unit_text(ctx)) == shape(unit_text(PLAIN))


@SETTINGS
@given(agents())
def test_every_accepted_registry_renders_config_keys_and_registry_copy_exactly(
        data: dict) -> None:
    registry = load({"wizards": {"a": data}})
    if registry is None:
        return
    ctx = context(registry)
    agent = ctx.agent
    config = json.loads(ctx.config_json())
    assert config["model"] == agent.model and config["config"] == agent.config
    assert config["provider"] == agent.provider and config["region"] == agent.region
    lines = render.authorized_keys_text(agent.authorized_keys).splitlines()
    assert lines == list(data["authorized_keys"])
    assert [line.split(" ", 2) for line in lines] == [
        key.split(" ", 2) for key in data["authorized_keys"]]
    copy = parse_registry(ctx.node_registry(), REGISTRY).get("a")
    assert (copy.model, copy.description, copy.region, copy.config, copy.provider,
            copy.provider_url, copy.runtime_command) == (
        agent.model, agent.description, agent.region, agent.config, agent.provider,
        agent.provider_url, agent.runtime_command)


# Any YAML value: text of every code point but surrogates (control characters included, which
# the registry refuses but a value from code might hold), numbers, nesting; keys as the
# registry takes them (a key with a control character is written another way by each).
any_key = st.text(min_size=1, max_size=12).filter(
    lambda key: not any(unsafe_character(char) for char in key))
any_yaml = st.recursive(
    st.one_of(st.text(max_size=300), st.integers(), st.booleans(), st.none(),
              st.floats(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_key, inner, max_size=4),
    max_leaves=20)


def python_emitter_copy(data: Any) -> str:
    """The registry copy as a controller whose PyYAML lacks libyaml renders it."""
    with mock.patch.object(render, "_DUMPER", yaml.SafeDumper), \
            mock.patch.object(render, "_LOADER", yaml.SafeLoader):
        return render.registry_copy(data)


needs_libyaml = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")


@needs_libyaml
@SETTINGS
@given(agents(), agents())
def test_every_accepted_registry_copy_is_the_same_text_with_or_without_libyaml(
        first: dict, second: dict) -> None:
    registry = load({"wizards": {"a": first, "b": {**second, "role": "worker"}}})
    if registry is None:
        return
    data = yaml.safe_load(context(registry).node_registry().removeprefix(
        render.REGISTRY_COPY_HEADER))
    assert render.registry_copy(data) == python_emitter_copy(data)


@needs_libyaml
@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(any_key, any_yaml, max_size=5))
def test_the_registry_copy_is_the_same_text_with_or_without_libyaml_for_any_value(
        data: dict) -> None:
    try:
        expected = python_emitter_copy(data)
    except render.RenderError:
        with pytest.raises(render.RenderError):
            render.registry_copy(data)
        return
    assert render.registry_copy(data) == expected


def test_a_long_escaped_value_stays_on_one_line_of_the_copy() -> None:
    """The width at which libyaml and PyYAML's emitter would fold it differently."""
    value = "\xa1" * 4 + "\u0100" * 2 + "\U00010000" * 40
    body = render.registry_copy({"description": value}).removeprefix(
        render.REGISTRY_COPY_HEADER)
    assert body.count("\n") == 1 and yaml.safe_load(body) == {"description": value}


@SETTINGS
@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
                       st.text().filter(lambda value: not unsafe_character(value.replace(
                           "\n", "").replace("\t", "").replace("\r", ""))),
                       max_size=5))
def test_env_file_reads_back_exactly(env: dict[str, str]) -> None:
    entries = parse_env_entries(render.env_file(env))
    assert {entry.name: entry.value for entry in entries} == env


@pytest.mark.parametrize("value", ["a\nExecStartPre=+/bin/touch /tmp/PWNED", "x\0", "\x1b[0m",
                                   "a\u2028b", "\ud800"])
def test_the_unit_renderer_refuses_what_a_unit_cannot_carry(value: str) -> None:
    with pytest.raises(render.RenderError, match=r"^FLEET_MODEL: the value holds "):
        render.unit_env("FLEET_MODEL", value)
    with pytest.raises(render.RenderError, match=r"^command: the value holds "):
        render.unit_command(["python3", value])


@pytest.mark.parametrize("argv", [["+/bin/sh"], ["-x"], ["@a", "b"], ["!x"], ["a", ";"],
                                  ["a", ""], []])
def test_the_unit_renderer_refuses_flags_separators_and_empty_words(argv: list[str]) -> None:
    with pytest.raises(render.RenderError):
        render.unit_command(argv)


def test_a_template_value_outside_the_quoting_functions_must_be_a_plain_word() -> None:
    assert render.unit_file("User={{ u }} Port={{ p }}\n", u="a-b", p=8646) == (
        "User=a-b Port=8646\n")
    for bad in ("a b", "a\nB=c", "%n", "$X", '"', True, None):
        with pytest.raises(render.RenderError, match="cannot stand unquoted in a unit file"):
            render.unit_file("User={{ u }}\n", u=bad)


@pytest.mark.parametrize("line", [
    'command="touch /tmp/x" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7 op',
    key_line("ssh-ed25519", b"k" * 32, "op") + "\nssh-rsa AAAA",
    key_line("ssh-rsa", b"k" * 32, "").replace("ssh-rsa ", "ssh-ed25519 ", 1),
    "ssh-ed25519 not-base64!!",
    key_line("ssh-dss", b"k" * 32, "op"),
    key_line("ssh-ed25519", b"k" * 32, "a\u00e9b"),
])
def test_authorized_keys_refuse_anything_but_a_public_key_line(line: str) -> None:
    with pytest.raises(render.RenderError, match=r"^authorized_keys entry 1: "):
        render.authorized_keys([line])


def test_config_json_refuses_a_number_json_cannot_hold() -> None:
    with pytest.raises(render.RenderError, match=r"^config\.json: "):
        render.config_json({"config": {"x": float("nan")}})


# --- the injection probe: every string of a full registry, with each refused character ---

FULL: dict[str, Any] = {
    "fleet": {"name": "sovereign", "ssh_key": "keys/id", "known_hosts": "known_hosts",
              "repo_url": "https://git.example/fleet.git", "become": "sudo",
              "regions": {"eu": {"batch": 1}, "us": None}},
    "wizards": {
        "ezra": {
            "host": "192.0.2.1", "role": "orchestrator", "model": "google/gemma",
            "health_endpoint": "http://192.0.2.1:8646/health", "capabilities": ["deploy"],
            "description": "the orchestrator", "ssh_user": "deploy", "soul": "souls/e.md",
            "region": "eu",
            "provider": {"name": "router", "base_url": "https://api.example/v1",
                         "api_key": "ROUTER_KEY"},
            "authorized_keys": [key_line("ssh-ed25519", b"k" * 32, "op@laptop")],
            "config": {"tone": "low", "greeting": "hello"},
            "runtime": {"command": ["python3", "agent.py", "--verbose"]},
            "tools": {
                "count": {"command": ["wc", "-w", "{path}"], "description": "count words",
                          "callers": ["bezalel"],
                          "args": {"type": "object", "required": ["path"],
                                   "properties": {"path": {"type": "string",
                                                           "description": "a file",
                                                           "pattern": "^[a-z]+$"}}}},
                "greet": {"handler": "tools.greet:run", "description": "say hello"},
            },
        },
        "bezalel": {"host": "192.0.2.2", "role": "worker", "model": "m", "region": "us",
                    "ssh_user": "deploy", "provider": "a label"},
    },
}


def string_places(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """Every string of ``data``: (path, "key" or "value"); a path holds keys and list
    indices."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append(((*path, key), "key"))
            found += string_places(value, (*path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found += string_places(item, (*path, index))
    elif isinstance(data, str):
        found.append((path, "value"))
    return found


def dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def injected(path: tuple[Any, ...], kind: str, char: str) -> tuple[dict[str, Any], str]:
    """A deep copy of FULL with ``char`` put into the string at ``path``; the place the
    refusal must name."""
    data = json.loads(json.dumps(FULL))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if kind == "value":
        parent[last] = parent[last] + char + "x"
        return data, dotted(path)
    bad = f"{last}{char}x"
    parent[bad] = parent.pop(last)
    return data, printable(dotted((*path[:-1], bad)))


def test_the_full_registry_is_valid() -> None:
    registry = parse_registry(yaml.safe_dump(FULL), REGISTRY)
    assert registry.get("ezra").tools and registry.get("ezra").authorized_keys


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\u2028"],
                         ids=["LF", "CR", "NUL", "ESC", "LS"])
@pytest.mark.parametrize(("path", "kind"), string_places(FULL),
                         ids=[f"{dotted(path)}:{kind}" for path, kind in string_places(FULL)])
def test_a_control_character_in_any_string_is_refused_naming_the_field(
        path: tuple[Any, ...], kind: str, char: str) -> None:
    data, where = injected(path, kind, char)
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data), REGISTRY)
    assert any(f": {where}: " in problem and " holds " in problem
               for problem in caught.value.problems), caught.value.problems
    assert all("\n" not in problem and "\r" not in problem for problem in caught.value.problems)


def test_the_reported_newline_probe_is_refused_with_file_line_field_and_fix() -> None:
    data = {"wizards": {"a": {"host": "192.0.2.1", "role": "worker",
                              "model": "m\nExecStartPre=+/bin/touch /tmp/PWNED"}}}
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data), REGISTRY)
    assert caught.value.problems == [
        f"{REGISTRY}:4: wizards.a.model: 'm\\nExecStartPre=+/bin/touch /tmp/PWNED' holds a "
        "newline at position 2; remove it (no registry string may hold a control character: "
        "newline, CR, tab, NUL, ESC, U+2028, U+2029, bidirectional controls, zero-width "
        "characters and the like)"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("model", "-x", "'-x' starts with '-' or has spaces at either end"),
    ("model", "m" * 257, "is 257 characters long; at most 256 allowed"),
    ("description", "d" * 1025, "is 1025 characters long; at most 1024 allowed"),
    ("health_endpoint", "http://h/ x", "holds a space or control character"),
    ("runtime", {"command": ["+/bin/sh", "-c", "id"]}, "starts with one of '-@:+!|'"),
    ("runtime", {"command": ["a", ";", "b"]}, "holds an argument ';'"),
    ("config", {"x": float("inf")}, "x: inf is not a finite number"),
    ("authorized_keys", ['command="id" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7'],
     "has options before the key type"),
    ("region", "r" * 5000, "is 5000 characters long; the registry allows at most 4096"),
], ids=["model-dash", "model-long", "description-long", "url-space", "runtime-flag",
        "runtime-separator", "config-inf", "key-options", "region-long"])
def test_values_that_would_read_as_options_or_are_too_long_are_refused(
        field: str, value: Any, message: str) -> None:
    data = {"wizards": {"a": {"host": "192.0.2.1", "role": "worker", "model": "m",
                              field: value}}}
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data, width=10_000), REGISTRY)
    assert any(f"wizards.a.{field}" in problem and message in problem
               for problem in caught.value.problems), caught.value.problems


def test_provider_base_url_with_a_newline_is_refused_though_urlsplit_drops_it() -> None:
    data = {"wizards": {"a": {"host": "192.0.2.1", "role": "worker", "model": "m", "provider": {
        "base_url": "http://h/v1\nExecStartPre=+/bin/id", "api_key": "K"}}}}
    with pytest.raises(RegistryError) as caught:
        parse_registry(yaml.safe_dump(data), REGISTRY)
    assert [problem.split(": ", 2)[1] for problem in caught.value.problems] == [
        "wizards.a.provider.base_url"]


def test_every_fleet_unit_runs_in_the_one_sandbox_block() -> None:
    """The agent, runtime, schedule and receiver units include the one sandbox block (each adds only
    its ``ReadWritePaths=``): no template spells a sandbox setting itself."""
    from fleet.control.templates import read_template

    block = read_template("sandbox.conf.j2")
    assert "ProtectSystem=strict" in block and "SystemCallFilter=@system-service" in block
    root = Path(render.__file__).resolve().parents[1]
    sources = [root / "control/templates/fleet-agent.service.j2",
               root / "control/templates/fleet-runtime.service.j2",
               root / "control/templates/fleet-schedule.service.j2",
               root / "webhook/fleet-webhook.service"]
    settings_in_block = {line.split("=", 1)[0] for line in block.splitlines()}
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert '{% include "sandbox.conf.j2" %}' in text, source
        own = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
        assert not own & settings_in_block, (source, own & settings_in_block)
        rendered = render.unit_file(text, **UNIT_VALUES)
        assert block in rendered, source


UNIT_VALUES: dict[str, Any] = {
    "agent": "a", "user_name": "a", "etc_dir": "/etc/fleet/a", "current": "/opt/fleet/current",
    "state_dir": "/var/lib/fleet/a", "port": 8646, "memory_max": "1G", "tasks_max": 512,
    "workers": 2,
    "kind": "builtin", "gateway_unit": "fleet-agent-a.service", "extra_env": [],
    "work_dir": "/var/lib/fleet/a", "python": "/usr/bin/python3", "pythonpath": "",
    "cache_dir": "/var/cache/fleet", "schedule": "nightly", "timeout_s": 120,
    "exec_start": render.unit_command(["/usr/bin/python3", "-m", "fleet.runtime"])}


# --- the node helper's launcher (fleet-nodectl) ----------------------------------------------

def _launcher_dir(tmp_path: Path) -> Path:
    """A copy of /opt/fleet/lib as the deploy writes it: the helper's source as a module."""
    from deploys.release import nodectl_source

    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "fleet_nodectl.py").write_text(nodectl_source())
    (folder / "fleet_nodectl.py").chmod(0o644)  # as the deploy writes it
    (tmp_path / "fleet-nodectl").write_text(render.nodectl_launcher(str(folder), "fleet_nodectl"))
    (tmp_path / "opt" / "releases").mkdir(parents=True)  # $FLEET_OPT: the helper's /opt/fleet
    return folder


def _run_launcher(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-IS", str(tmp_path / "fleet-nodectl"), *args],
                          capture_output=True, text=True, timeout=60, check=False, umask=0,
                          env={"FLEET_OPT": str(tmp_path / "opt"), "PATH": "/usr/bin:/bin"})


def test_the_launcher_runs_the_helper_module_and_its_code_is_cached_after_the_first_run(
        tmp_path: Path) -> None:
    folder = _launcher_dir(tmp_path)
    (folder / "__pycache__").mkdir(mode=0o755)  # made by baseline (deploys/baseline.py)
    refused = _run_launcher(tmp_path, "switch", "../../../tmp")  # with umask 000
    assert refused.returncode == 2  # the helper's own argument check, its exit code passed on
    assert "'../../../tmp' is not a release id" in refused.stderr
    (cached,) = (folder / "__pycache__").iterdir()
    assert cached.name == f"fleet_nodectl.{sys.implementation.cache_tag}.pyc"
    assert cached.stat().st_mode & 0o777 == 0o644  # the module's mode, not the umask's
    pruned = _run_launcher(tmp_path, "prune", "--keep", "2")  # the cached code runs
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout) == {"kept": [], "removed": []}


def test_nothing_in_the_helper_folder_shadows_the_standard_library(tmp_path: Path) -> None:
    folder = _launcher_dir(tmp_path)
    for name in ("json", "argparse", "subprocess", "os"):
        (folder / f"{name}.py").write_text("raise SystemExit('shadowed the standard library')\n")
    done = _run_launcher(tmp_path, "prune", "--keep", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"kept": [], "removed": []}


@SETTINGS
@given(folder=st.text(max_size=80), module=st.text(max_size=40))
def test_the_launcher_names_exactly_its_folder_and_module_or_is_refused(folder: str,
                                                                       module: str) -> None:
    try:
        text = render.nodectl_launcher(folder, module)
    except render.RenderError:
        assert not (folder and module and module.isidentifier() and not keyword.iskeyword(module)
                    and render.BARE_RE.fullmatch(folder) and render.BARE_RE.fullmatch(module))
        return
    tree = ast.parse(text)  # valid Python, whatever the values
    appended = [node.value.args[0] for node in tree.body if isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Call) and ast.unparse(node.value.func)
                == "sys.path.append"]
    imported = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [ast.literal_eval(value) for value in appended] == [folder]
    assert imported == [module]
    assert text.startswith("#!/usr/bin/python3 -IS\n")
