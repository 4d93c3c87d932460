"""The registry edit of ``fleet move``: one agent's ``host`` rewritten in place, for every
host value the registry accepts; comments, quoting, flow mappings and the other agents kept."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.control.registry_edit import diff, set_host
from fleet.core.errors import RegistryError
from fleet.core.registry import is_host, parse_registry
from fleet.core.validate import HOSTNAME_RE

REGISTRY = """\
# the fleet (a comment the edit keeps)
fleet:
  name: test
wizards:
  ezra-primary:
    host: 192.0.2.10   # the orchestrator
    role: orchestrator
    model: m
  bezalel:
    host: '192.0.2.20'   # quoted, with a comment
    role: worker
    model: m
    health_endpoint: "http://192.0.2.20:8646/health"

  allegro: {host: 192.0.2.30, role: worker, model: m, health_endpoint: "https://proxy.example/h"}
"""
OTHERS = {"192.0.2.10", "192.0.2.30"}
EDITED_LINES = {"ezra-primary": [5], "bezalel": [9, 12], "allegro": [14]}  # 0-based


def registry_at(tmp: Path, text: str = REGISTRY) -> Path:
    (tmp / "souls").mkdir(exist_ok=True)
    for name in ("ezra-primary", "bezalel", "allegro"):
        (tmp / "souls" / f"{name}.md").write_text("soul\n")
    path = tmp / "registry.yaml"
    path.write_text(text)
    return path


HOSTS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(HOSTNAME_RE, fullmatch=True),
    st.sampled_from(["10", "1e5", "0x1f", "true", "null", "on", "::1", "fe80::1", "localhost"]),
).filter(lambda host: is_host(host) and host not in OTHERS)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=HOSTS, name=st.sampled_from(["ezra-primary", "bezalel", "allegro"]))
def test_only_the_agents_host_changes_for_every_accepted_host(
        tmp_path_factory: pytest.TempPathFactory, host: str, name: str) -> None:
    path = registry_at(tmp_path_factory.mktemp("registry"))
    registry = parse_registry(REGISTRY, path)
    edited = set_host(registry, REGISTRY, name, host)
    again = parse_registry(edited, path)
    assert again.get(name).host == host
    assert {other: agent for other, agent in again.agents.items() if other != name} == {
        other: agent for other, agent in registry.agents.items() if other != name}
    changed = [line for line in difflib.ndiff(REGISTRY.splitlines(), edited.splitlines())
               if line[:1] in "+-"]
    lines = EDITED_LINES[name]  # its host line (and bezalel's health_endpoint)
    removed = [line[2:] for line in changed if line[0] == "-"]
    assert removed == [REGISTRY.splitlines()[number] for number in lines]
    assert len(changed) == 2 * len(lines)
    if name == "bezalel":  # an explicit health endpoint naming the old host moves with it
        shown = f"[{host}]" if ":" in host else host
        assert again.get(name).health_endpoint == f"http://{shown}:8646/health"
    if name == "allegro":  # one naming another host stays
        assert again.get(name).health_endpoint == "https://proxy.example/h"
    assert "# the orchestrator" in edited and "# quoted, with a comment" in edited


def test_the_diff_shows_the_one_edit(tmp_path: Path) -> None:
    path = registry_at(tmp_path)
    registry = parse_registry(REGISTRY, path)
    edited = set_host(registry, REGISTRY, "ezra-primary", "192.0.2.40")
    assert diff(REGISTRY, edited, path) == (
        "--- a/registry.yaml\n+++ b/registry.yaml\n@@ -3,7 +3,7 @@\n"
        "   name: test\n wizards:\n   ezra-primary:\n"
        "-    host: 192.0.2.10   # the orchestrator\n"
        "+    host: 192.0.2.40   # the orchestrator\n"
        "     role: orchestrator\n     model: m\n   bezalel:\n")


def test_a_host_already_taken_on_the_same_port_is_refused(tmp_path: Path) -> None:
    path = registry_at(tmp_path)
    registry = parse_registry(REGISTRY, path)
    with pytest.raises(RegistryError, match=r"wizards.bezalel.host cannot be set to "
                                            r"'192.0.2.10' in place"):
        set_host(registry, REGISTRY, "bezalel", "192.0.2.10")
