"""Registry fields of thinking agents: ``provider`` (a chat API) and ``runtime``; the runtime's
unit has the gateway's sandbox, starts and restarts with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.control.templates import read_template
from fleet.core.errors import RegistryError
from fleet.core.registry import parse_registry
from fleet.core.runtime_config import MemorySettings, RuntimeConfigError, runtime_settings

BASE = """\
wizards:
  bezalel:
    host: 192.0.2.20
    role: worker
    model: google/gemma-4-31b-it
"""


def parse(extra: str, folder: Path = Path("registry.yaml")) -> object:
    return parse_registry(BASE + extra, folder)


def problems(extra: str, path: Path = Path("registry.yaml")) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(BASE + extra, path)
    return caught.value.problems


def test_provider_mapping_gives_the_builtin_runtime() -> None:
    registry = parse_registry(BASE + "    provider: {name: openrouter, base_url: "
                              "'https://openrouter.ai/api/v1', api_key: OPENROUTER_API_KEY}\n",
                              Path("registry.yaml"))
    agent = registry.get("bezalel")
    assert (agent.provider, agent.provider_url, agent.provider_key, agent.runtime) == (
        "openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "builtin")
    assert agent.runtime_unit == "fleet-runtime-bezalel.service"
    again = parse_registry(__import__("yaml").safe_dump(registry.to_dict()),
                           Path("registry.yaml")).get("bezalel")
    assert again.to_dict() == agent.to_dict()


def test_provider_as_text_runs_no_runtime() -> None:
    agent = parse_registry(BASE + "    provider: openrouter\n", Path("r.yaml")).get("bezalel")
    assert (agent.provider, agent.provider_url, agent.runtime, agent.runtime_unit) == (
        "openrouter", None, "none", None)


@pytest.mark.parametrize(("extra", "message"), [
    ("    provider: {base_url: 'ftp://x'}\n",
     "registry.yaml:6: wizards.bezalel.provider: base_url 'ftp://x' is not a valid URL: "
     "scheme must be http or https"),
    ("    provider: {base_url: 'http://x/v1', api_key: 'sk-or-abc'}\n",
     "registry.yaml:6: wizards.bezalel.provider: api_key 'sk-or-abc' is not the name of a "
     "secret"),
    ("    provider: {base_url: 'http://x/v1', key: K}\n",
     "registry.yaml:6: wizards.bezalel.provider: unknown field 'key'; allowed: name, "
     "base_url, api_key"),
    ("    runtime: builtin\n",
     "registry.yaml:6: wizards.bezalel.runtime: the built-in runtime needs a model to call"),
    ("    runtime: smart\n",
     "registry.yaml:6: wizards.bezalel.runtime: 'smart' is not a runtime (builtin, none"),
    ("    runtime: {command: 'python3 agent.py'}\n",
     "registry.yaml:6: wizards.bezalel.runtime: command 'python3 agent.py' is not a "
     "non-empty list of arguments"),
    ("    runtime: {command: [python3, agent.py], ship: [../agent.py]}\n",
     "registry.yaml:6: wizards.bezalel.runtime: ship path '../agent.py' is not a relative "
     "path inside the registry's folder"),
])
def test_bad_provider_or_runtime_is_named_with_the_fix(extra: str, message: str) -> None:
    found = problems(extra)
    assert any(problem.startswith(message) for problem in found), found


def test_operator_runtime_ships_files_beside_the_registry(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("print('hi')\n")
    registry = parse_registry(BASE + "    runtime: {command: [python3, agent.py], "
                              "ship: [agent.py]}\n", tmp_path / "registry.yaml")
    agent = registry.get("bezalel")
    assert (agent.runtime, agent.runtime_command, agent.runtime_ship) == (
        "command", ("python3", "agent.py"), ("agent.py",))
    missing = problems("    runtime: {command: [python3, x.py], ship: [x.py]}\n",
                       tmp_path / "registry.yaml")
    assert any("ship path 'x.py' is not a file beside the registry" in p for p in missing)


def test_runtime_unit_has_the_gateway_sandbox_and_follows_the_gateway() -> None:
    gateway = read_template("fleet-agent.service.j2")
    runtime = read_template("fleet-runtime.service.j2")
    sandbox = "ReadWritePaths" + gateway.split("\nReadWritePaths", 1)[1].split("[Install]")[0]
    hardening = [line for line in sandbox.splitlines() if line and not line.startswith("#")]
    assert hardening and all(line in runtime.splitlines() for line in hardening)
    assert "PartOf={{ gateway_unit }}" in runtime
    assert "WantedBy={{ gateway_unit }}" in runtime


def test_node_registry_names_shipped_files_where_the_node_has_them(tmp_path: Path) -> None:
    from deploys.context import AgentContext

    (tmp_path / "agent.py").write_text("print('hi')\n")
    text = ("wizards:\n"
            "  a:\n    host: 192.0.2.1\n    role: worker\n    model: m\n"
            "    runtime: {command: [python3, agent.py], ship: [agent.py]}\n"
            "  b:\n    host: 192.0.2.2\n    role: worker\n    model: m\n"
            "    runtime: {command: [python3, agent.py], ship: [agent.py]}\n")
    registry = parse_registry(text, tmp_path / "registry.yaml")
    node_text = AgentContext(agent=registry.get("a"), registry=registry,
                             soul_source=tmp_path / "soul.md").node_registry()
    node = tmp_path / "etc"  # /etc/fleet/a on the node: the copy, soul.md and ship/
    (node / "ship").mkdir(parents=True)
    (node / "ship" / "agent.py").write_text("print('hi')\n")
    (node / "soul.md").write_text("soul\n")
    copy = parse_registry(node_text, node / "registry.yaml")
    assert copy.get("a").runtime_ship == ("ship/agent.py",)
    assert (copy.get("b").runtime, copy.get("b").runtime_ship) == ("command", ())


@pytest.mark.parametrize(("config", "problem"), [
    ("{max_tokens: lots}", "max_tokens 'lots' is not a whole number from 1 to 1000000 (the "
     "most tokens one answer may take), e.g. max_tokens: 256"),
    ("{max_tokens: 0}", "max_tokens 0 is not a whole number from 1 to 1000000"),
    ("{max_tokens: true}", "max_tokens True is not a whole number"),
    ("{model_check_s: soon}", "model_check_s 'soon' is not a number of seconds from 0 to "
     "86400 (how often an idle runtime checks its model; 0 = never), e.g. model_check_s: 60"),
    ("{model_check_s: -1}", "model_check_s -1 is not a number of seconds"),
    ("{temperature: hot}", "temperature 'hot' is not a number from 0 to 2 (the sampling "
     "temperature; 0 = always the likeliest token), e.g. temperature: 0.7"),
    ("{temperature: 2.5}", "temperature 2.5 is not a number from 0 to 2"),
    ("{memory: 20}", "memory 20 is not a mapping of turns, max_chars, keep_days, e.g. "
     "memory: {turns: 20, max_chars: 16000, keep_days: 30}"),
    ("{memory: {turns: 20, days: 3}}", "memory.days is not a memory setting (settings: "
     "turns, max_chars, keep_days), e.g. memory: {turns: 20, max_chars: 16000, keep_days: 30}"),
    ("{memory: {turns: many}}", "memory.turns 'many' is not a whole number from 0 to 1000 "
     "(the most earlier turns sent with a prompt), e.g. memory: {turns: 20}"),
    ("{memory: {turns: 2.5}}", "memory.turns 2.5 is not a whole number"),
    ("{memory: {max_chars: true}}", "memory.max_chars True is not a whole number from 0 to "
     "1000000 (the most characters of earlier turns sent with a prompt), e.g. memory: "
     "{max_chars: 16000}"),
    ("{memory: {keep_days: 0}}", "memory.keep_days 0 is not a whole number from 1 to 3650 "
     "(days a turn is kept), e.g. memory: {keep_days: 30}"),
    ("{memory: {keep_days: .inf}}", "memory.keep_days inf is not a whole number"),
])
def test_runtime_settings_in_config_are_checked_with_their_types(config: str,
                                                                 problem: str) -> None:
    found = problems(f"    config: {config}\n")
    assert len(found) == 1 and found[0].startswith(
        f"registry.yaml:6: wizards.bezalel.config: {problem}"), found


def test_runtime_settings_and_the_agents_own_keys_pass() -> None:
    agent = parse("    config: {max_tokens: 64, model_check_s: 0, temperature: 0.2, "
                  "style: terse}\n")
    assert agent.get("bezalel").config == {  # type: ignore[attr-defined]
        "max_tokens": 64, "model_check_s": 0, "temperature": 0.2, "style": "terse"}
    settings = runtime_settings(agent.get("bezalel").config)  # type: ignore[attr-defined]
    assert (settings.max_tokens, settings.model_check_s, settings.temperature) == (64, 0, 0.2)
    assert runtime_settings({}).temperature is None  # the provider's default
    remembers = parse("    config: {memory: {turns: 5, max_chars: 900}}\n").get(  # type: ignore[attr-defined]
        "bezalel")
    assert runtime_settings(remembers.config).memory == MemorySettings(5, 900, 30)
    assert runtime_settings({}).memory == MemorySettings(20, 16_000, 30)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(), max_size=2))


MEMORY = st.one_of(VALUES, st.dictionaries(
    st.one_of(st.sampled_from(["turns", "max_chars", "keep_days"]), st.text(max_size=4)),
    VALUES))


@settings(max_examples=500, deadline=None)
@given(config=st.dictionaries(st.sampled_from(["max_tokens", "model_check_s", "temperature"]),
                              VALUES).flatmap(lambda found: st.one_of(
                                  st.just(found), MEMORY.map(lambda memory: {
                                      **found, "memory": memory}))))
def test_every_config_the_validator_accepts_makes_a_request_the_provider_can_read(
        config: dict[str, object]) -> None:
    """Whatever an agent's ``config:`` holds, the runtime's settings are refused with
    :class:`RuntimeConfigError` or are finite numbers in range that a chat request carries as
    plain JSON (no NaN, no infinity, no boolean), and memory bounds that are whole numbers in
    range."""
    try:
        found = runtime_settings(config)
    except RuntimeConfigError:
        return
    assert 1 <= found.max_tokens <= 1_000_000 and 0 <= found.model_check_s <= 86_400
    assert found.temperature is None or 0 <= found.temperature <= 2
    memory = found.memory
    for value, high in ((memory.turns, 1000), (memory.max_chars, 1_000_000),
                        (memory.keep_days, 3650)):
        assert type(value) is int and 0 <= value <= high
    assert memory.keep_days >= 1
    body = {"max_tokens": found.max_tokens, "temperature": found.temperature}
    assert json.loads(json.dumps(body, allow_nan=False)) == body
