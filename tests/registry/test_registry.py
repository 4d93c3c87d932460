"""Registry loading: every kind of bad input gets one clear message naming line and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fleet.core.errors import RegistryError
from fleet.core.registry import load_registry, parse_registry

GOOD = """\
wizards:
  ezra-primary:
    host: 192.0.2.10
    role: orchestrator
    model: google/gemma-4-31b-it
    health_endpoint: "http://192.0.2.10:8646/health"
    capabilities: [ansible-deploy, webhook-receiver]
  bezalel:
    host: 192.0.2.20
    role: worker
    model: google/gemma-4-31b-it
"""


def problems(text: str) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        parse_registry(textwrap.dedent(text), Path("registry.yaml"))
    return caught.value.problems


def test_example_registry_loads(repo: Path) -> None:
    registry = load_registry(repo / "registry.yaml")
    assert list(registry.agents) == ["ezra-primary", "bezalel", "allegro"]
    assert [a.name for a in registry.by_role("worker")] == ["bezalel", "allegro"]
    assert [a.name for a in registry.with_capability("webhook-receiver")] == ["ezra-primary"]
    for agent in registry:
        assert registry.soul_path(agent).is_file()


def test_defaults_are_filled_in() -> None:
    registry = parse_registry(GOOD, Path("registry.yaml"))
    bezalel = registry.get("bezalel")
    assert bezalel.gateway_port == 8646
    assert bezalel.ssh_user == "root" and bezalel.ssh_port == 22
    assert bezalel.health_endpoint == "http://192.0.2.20:8646/health"
    assert bezalel.soul == "souls/bezalel.md"
    assert bezalel.capabilities == ()
    assert registry.to_dict()["wizards"]["bezalel"]["gateway_port"] == 8646


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("wizards:\n  a: [1, 2\n",
         "registry.yaml:3:1: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        ("", "registry.yaml: registry is empty; it needs a `wizards:` mapping"),
        ("fleet: {name: x}\n", "registry.yaml:1: missing `wizards:`, the mapping of agent name "
         "to agent"),
        ("wizards: {}\n", "registry.yaml:1: wizards: no agents defined; add at least one agent"),
        ("- a\n- b\n", "registry.yaml:1: the registry must be a mapping with a `wizards:` key"),
        ("wizard: {}\n", "registry.yaml:1: wizard: unknown field; did you mean 'wizards'? "
         "allowed: wizards, fleet, work"),
    ],
)
def test_file_level_errors(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_unknown_field_suggests_close_name() -> None:
    found = problems(GOOD.replace("    model: google/gemma-4-31b-it\n    health",
                                  "    modle: google/gemma-4-31b-it\n    health"))
    assert "registry.yaml:5: wizards.ezra-primary.modle: unknown field; did you mean 'model'? " \
        "allowed: host, role, model, health_endpoint, capabilities, description, gateway_port, " \
        "ssh_user, ssh_port, soul, region, provider, authorized_keys, config, runtime, " \
        "tools, state, schedules" in found
    assert "registry.yaml:2: wizards.ezra-primary.model: missing required field" in found


def test_missing_host() -> None:
    found = problems(GOOD.replace("    host: 192.0.2.20\n", ""))
    assert found == ["registry.yaml:8: wizards.bezalel.host: missing required field"]


def test_bad_role() -> None:
    found = problems(GOOD.replace("role: worker", "role: wrker"))
    assert found == ["registry.yaml:10: wizards.bezalel.role: 'wrker' is not a role "
                     "(orchestrator, worker); did you mean 'worker'?"]


@pytest.mark.parametrize("value", ["ansible-deploy", "[1, 2]", "{a: b}"])
def test_capabilities_must_be_list_of_strings(value: str) -> None:
    found = problems(GOOD.replace("[ansible-deploy, webhook-receiver]", value))
    assert len(found) == 1
    assert found[0].startswith("registry.yaml:7: wizards.ezra-primary.capabilities: ")
    assert found[0].endswith("is not a list of strings (write [a, b] or one '- item' per line)")


@pytest.mark.parametrize(
    ("url", "reason"),
    [("192.0.2.10:8646/health", "scheme must be http or https"),
     ("http:///health", "no host"),
     ("http://192.0.2.10:99999/health", "bad port")],
)
def test_malformed_health_endpoint(url: str, reason: str) -> None:
    found = problems(GOOD.replace('"http://192.0.2.10:8646/health"', f'"{url}"'))
    assert found == [f"registry.yaml:6: wizards.ezra-primary.health_endpoint: '{url}' is not a "
                     f"valid health URL: {reason} (expected like http://HOST:8646/health)"]


def test_duplicate_agent_names() -> None:
    found = problems(GOOD + "  bezalel:\n    host: 192.0.2.30\n    role: worker\n    model: m\n")
    assert found == ["registry.yaml:12: wizards.bezalel: duplicate agent name "
                     "(first defined on line 8)"]


def test_two_agents_on_same_host_and_port() -> None:
    found = problems(GOOD.replace("host: 192.0.2.20", "host: 192.0.2.10"))
    assert found == ["registry.yaml:8: wizards.bezalel.host: 192.0.2.10:8646 is already used by "
                     "ezra-primary (line 2); give each agent its own host or gateway_port"]


@pytest.mark.parametrize(("first", "second"), [("::1", "0:0::1"),
                                               ("192.0.2.10", "::ffff:192.0.2.10"),
                                               # outside attack r35: one machine, other words
                                               ("127.0.0.1", "127.0.0.2"),
                                               ("127.0.0.1", "64:ff9b::7f00:1"),
                                               ("192.0.2.10", "64:ff9b::c000:20a"),
                                               ("192.0.2.10", "2002:c000:20a::"),
                                               ("192.0.2.10", "::ffff:0:c000:20a"),
                                               ("Host.example", "host.example")])
def test_one_server_spelled_two_ways_is_one_host(first: str, second: str) -> None:
    """Host and port are compared as servers: an IP address in one form (IPv4-mapped IPv6
    unwrapped), a host name without case."""
    text = GOOD.replace("host: 192.0.2.10", f'host: "{first}"').replace(
        "host: 192.0.2.20", f'host: "{second}"').replace(
        '"http://192.0.2.10:8646/health"', '"http://127.0.0.1:8646/health"')
    found = problems(text)
    assert len(found) == 1 and "is already used by ezra-primary (line 2)" in found[0], found


@pytest.mark.parametrize(("host", "problem"), [
    ("10", "is the address 0.0.0.10 to ssh and the resolver (a legacy IPv4 form): write "
           "0.0.0.10, or the server's name"),
    ("0x7f.1", "is the address 127.0.0.1 to ssh and the resolver (a legacy IPv4 form): write "
               "127.0.0.1, or the server's name"),
    ("192.0.2.010", "is the address 192.0.2.8 to ssh and the resolver (a legacy IPv4 form): "
                    "write 192.0.2.8, or the server's name"),
    ("0.0.0.0", "is the unspecified address, which ssh takes for this machine: write the "
                "server's own address"),
    ("::", "is the unspecified address, which ssh takes for this machine: write the server's "
           "own address"),
    ("node.7", "ends in an all-digit label, which resolvers take for an address: write an "
               "address as a.b.c.d, or the server's full name"),
])
def test_a_host_name_the_resolver_reads_as_an_address_is_refused(host: str,
                                                                  problem: str) -> None:
    """Left alone at stop 34: `10` or `0x7f.1` passed as host names, so one server could be
    registered twice (0x7f.1 and 127.0.0.1) past the one-host check."""
    found = problems(GOOD.replace("host: 192.0.2.20", f'host: "{host}"'))
    assert found == [f"registry.yaml:9: wizards.bezalel.host: {host!r} {problem}"]


def test_a_host_that_is_not_a_string_is_no_host() -> None:
    from fleet.core.registry import is_host
    from fleet.core.validate import host_problem

    assert [is_host(value) for value in (None, 10, b"192.0.2.1", ["x"])] == [False] * 4  # type: ignore[arg-type]
    assert host_problem(10) == "is not a hostname or IP address"  # type: ignore[arg-type]


def test_same_host_other_port_is_fine() -> None:
    text = GOOD.replace("host: 192.0.2.20", "host: 192.0.2.10\n    gateway_port: 8647")
    assert parse_registry(text, Path("r.yaml")).get("bezalel").gateway_port == 8647


@pytest.mark.parametrize(
    ("line", "expected"),
    [("    host: http://192.0.2.20", "wizards.bezalel.host: 'http://192.0.2.20' is not a hostname "
      "or IP address (write just the name or address, no scheme, port or path)"),
     ("    host: 192.0.2.20\n    ssh_port: 70000", "wizards.bezalel.ssh_port: 70000 is not a "
      "port number (1-65535)"),
     ("    host: 192.0.2.20\n    config: [a]", "wizards.bezalel.config: must be a mapping of "
      "setting name to a string, number or boolean")],
)
def test_field_types(line: str, expected: str) -> None:
    found = problems(GOOD.replace("    host: 192.0.2.20", line))
    assert len(found) == 1 and found[0].split(": ", 1)[1] == expected


def test_bad_agent_name() -> None:
    found = problems(GOOD.replace("  bezalel:", "  Bezalel_1:"))
    assert found == ["registry.yaml:8: wizards.Bezalel_1: agent name must be 1-31 characters of "
                     "lowercase letters, digits and '-', starting with a letter"]


def test_all_problems_reported_together() -> None:
    found = problems(GOOD.replace("role: worker", "role: boss").replace("modle", "model")
                     .replace("[ansible-deploy, webhook-receiver]", "yes"))
    assert len(found) == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        load_registry(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: registry file not found"
    assert "FLEET_REGISTRY" in (caught.value.hint or "")


def test_unknown_agent_lookup() -> None:
    registry = parse_registry(GOOD, Path("registry.yaml"))
    with pytest.raises(RegistryError, match=r"no agent named 'gandalf' \(agents: ezra-primary, "
                       r"bezalel\)"):
        registry.get("gandalf")


REGIONS = """\
fleet:
  regions: {regions}
wizards:
  a: {{host: 192.0.2.1, role: orchestrator, model: m, region: us}}
  b: {{host: 192.0.2.2, role: worker, model: m, region: {b}}}
  c: {{host: 192.0.2.3, role: worker, model: m, region: eu}}
"""


def test_regions_in_order_with_their_settings() -> None:
    text = REGIONS.format(regions="{eu: {batch: 2}, us: null, ap: {max_failures: 1}}", b="ap")
    registry = parse_registry(text, Path("registry.yaml"))
    assert registry.region_order() == ["eu", "us", "ap"]
    assert registry.region("eu").batch == 2 and registry.region("ap").max_failures == 1
    assert registry.to_dict()["fleet"]["regions"] == {"eu": {"batch": 2}, "us": {},
                                                      "ap": {"max_failures": 1}}
    listed = parse_registry(REGIONS.format(regions="[ap, eu, us]", b="ap"), Path("r.yaml"))
    assert listed.region_order() == ["ap", "eu", "us"]
    assert listed.to_dict()["fleet"]["regions"] == ["ap", "eu", "us"]


def test_default_region_order_is_the_canarys_first_then_by_name() -> None:
    text = REGIONS.replace("fleet:\n  regions: {regions}\n", "").format(b="ap")
    assert parse_registry(text, Path("registry.yaml")).region_order() == ["us", "ap", "eu"]


@pytest.mark.parametrize(
    ("regions", "b", "expected"),
    [
        ("[eu, us]", "usa", "registry.yaml:5: wizards.b.region: 'usa' is not in fleet.regions "
         "(eu, us); did you mean 'us'? fix the name or add it to fleet.regions"),
        ("[eu, us, eu]", "us", "registry.yaml:2: fleet.regions.eu: region listed twice; list "
         "each region once"),
        ("[EU, us]", "us", "registry.yaml:2: fleet.regions: 'EU' is not a region name (1-31 "
         "lowercase letters, digits and '-', starting with a letter)"),
        ("{eu: {batch: 0}, us: {}}", "us", "registry.yaml:2: fleet.regions.eu.batch: 0 is not "
         "a whole number of 1 or more"),
        ("{eu: {bach: 2}, us: {}}", "us", "registry.yaml:2: fleet.regions.eu.bach: unknown "
         "field; did you mean 'batch'? allowed: batch, max_failures"),
        ("eu", "us", "registry.yaml:2: fleet.regions: 'eu' is not a list or mapping of "
         "regions; write `regions: [eu, us]` (rollout order) or a mapping like "
         "`regions: {eu: {batch: 2, max_failures: 0}}`"),
    ],
)
def test_bad_regions_are_named_with_the_fix(regions: str, b: str, expected: str) -> None:
    assert expected in problems(REGIONS.format(regions=regions, b=b))


def test_with_regions_every_agent_names_one() -> None:
    text = REGIONS.format(regions="[eu, us]", b="us").replace(", region: eu}", "}")
    assert problems(text) == [
        "registry.yaml:6: wizards.c.region: missing; the fleet lists regions (eu, us): give "
        "the agent `region: NAME` with one of them"]
