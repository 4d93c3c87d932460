"""The sandbox policy: what the root front door runs, its limits and allowlist, checked the
same on the controller (rendering) and on the node (reading the root-owned file)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.control import render
from fleet.core.sandbox_policy import (
    DEFAULT_ARGV,
    DEFAULT_LIMITS,
    PROGRAM_RE,
    Allowed,
    SandboxPolicy,
    SandboxPolicyError,
    argv_problem,
    policy_for,
    policy_from_dict,
    url_allowed,
)
from fleet.core.validate import unsafe_character

FORM = "(letters, digits and _ . / + - (+ and - not first), like python3 or /usr/bin/make)"


def test_defaults_run_pytest_with_bounded_limits_and_no_network() -> None:
    policy = policy_for()
    assert policy == SandboxPolicy()
    assert (policy.argv, policy.allow) == (DEFAULT_ARGV, ())
    assert dict(policy.limits) == DEFAULT_LIMITS == {
        "cpu_quota_percent": 100, "memory_max_mib": 512, "tasks_max": 64,
        "runtime_max_s": 600, "output_max_kib": 64}
    assert policy.output_max_bytes == 64 * 1024


def test_the_allowlist_is_every_source_host_and_port_once() -> None:
    policy = policy_for(["make", "test"], ["http://192.0.2.5:3000/api/v1",
                                           "http://192.0.2.5:3000/acme/shop.git",
                                           "https://[2001:db8::0:1]/x", "git://198.51.100.7/r"])
    assert policy.allow == (Allowed("192.0.2.5", 3000), Allowed("2001:db8::1", 443),
                            Allowed("198.51.100.7", 9418))
    assert policy.to_dict()["allow"][0] == {"ip": "192.0.2.5", "port": 3000}


@pytest.mark.parametrize(("data", "message"), [
    ({"argv": []}, "argv: [] is not a non-empty list of arguments (like [python3, -m, pytest])"),
    ({"argv": "make test"}, "argv: 'make test' is not a non-empty list of arguments (like "
                            "[python3, -m, pytest])"),
    ({"argv": ["--help"]}, "argv: the program '--help' is not a program name " + FORM),
    ({"argv": ["+/bin/sh"]}, "argv: the program '+/bin/sh' is not a program name " + FORM),
    ({"argv": ["make", "a\nb"]}, "argv: argument 2 holds a newline at position 2"),
    ({"argv": ["make", ""]}, "argv: argument 2 ('') is not a string of 1-256 characters"),
    ({"argv": ["x"] * 33}, "argv: has 33 arguments; at most 32 allowed"),
    ({"argv": ["py\u0663"]}, "argv: the program 'py\u0663' is not a program name " + FORM),
    ({"limits": {"tasks_max": 10**9}}, "limits.tasks_max: 1000000000 is not an integer in "
                                       "4..4096"),
    ({"limits": {"tasks_max": True}}, "limits.tasks_max: True is not an integer in 4..4096"),
    ({"limits": {"memory": 1}}, "limits: unknown field 'memory' (known: cpu_quota_percent, "
                                "memory_max_mib, tasks_max, runtime_max_s, output_max_kib)"),
    ({"allow": [{"ip": "forge.example", "port": 3000}]},
     "allow: 'forge.example' is not an IP address (the sandbox's firewall takes addresses, "
     "not host names)"),
    ({"allow": [{"ip": "192.0.2.5", "port": 0}]}, "allow: port 0 of 192.0.2.5 is not in "
                                                  "1..65535"),
    ({"allow": [{"ip": "192.0.2.5"}]}, "allow: {'ip': '192.0.2.5'} is not {ip: ADDRESS, "
                                       "port: N}"),
    ({"command": ["sh"]}, "unknown field 'command' (known: argv, limits, allow)"),
    ([], "list is not a policy mapping"),
])
def test_bad_policies_are_refused_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(SandboxPolicyError) as raised:
        policy_from_dict(data)
    assert str(raised.value) == message


def test_a_host_name_is_refused_unless_resolved_and_then_pinned_to_its_addresses() -> None:
    with pytest.raises(SandboxPolicyError, match=r"'forge\.example' is not an IP address"):
        policy_for(None, ["https://forge.example/api/v1"])  # the node never resolves
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["2001:db8::7", "192.0.2.7"]

    policy = policy_for(None, ["https://forge.example/api/v1", "http://192.0.2.9:3000/x.git",
                               "https://forge.example/acme/shop.git"], resolve=resolve)
    assert [(item.ip, item.port) for item in policy.allow] == [
        ("2001:db8::7", 443), ("192.0.2.7", 443), ("192.0.2.9", 3000)]
    assert asked == [("forge.example", 443), ("forge.example", 443)]
    for bad in ([], ["not an address"], ["fe80::1%eth0"]):
        with pytest.raises(SandboxPolicyError):
            policy_for(None, ["https://forge.example/api/v1"], resolve=lambda h, p, b=bad: b)


@given(st.lists(st.text(max_size=300), max_size=40))
def test_an_accepted_argv_is_safe_for_argv_and_json(argv: list[str]) -> None:
    problem = argv_problem(argv)
    if problem:
        with pytest.raises(SandboxPolicyError):
            policy_from_dict({"argv": argv})
        return
    assert PROGRAM_RE.fullmatch(argv[0]) and not argv[0].startswith("-")
    assert all(arg and len(arg) <= 256 and not unsafe_character(arg) for arg in argv)
    policy = policy_from_dict({"argv": argv})
    assert policy_from_dict(json.loads(render.config_json(policy.to_dict()))) == policy


@given(st.dictionaries(st.sampled_from(sorted(DEFAULT_LIMITS)),
                       st.integers(min_value=-10, max_value=70000)),
       st.lists(st.tuples(st.ip_addresses().map(str), st.integers(-1, 70000)), max_size=4))
def test_limits_and_allowlist_are_in_range_or_refused(limits: dict[str, int],
                                                      allow: list[tuple[str, int]]) -> None:
    data = {"limits": limits, "allow": [{"ip": ip, "port": port} for ip, port in allow]}
    try:
        policy = policy_from_dict(data)
    except SandboxPolicyError:
        return
    assert all(1 <= port <= 65535 for _, port in allow)
    assert policy.limits == {**DEFAULT_LIMITS, **limits}
    assert policy_from_dict(json.loads(render.config_json(policy.to_dict()))) == policy


def test_url_allowed_refuses_what_names_no_host_or_port() -> None:
    with pytest.raises(SandboxPolicyError, match="names no host and port"):
        url_allowed("file:///srv/repo.git")
    with pytest.raises(SandboxPolicyError, match="is not a URL"):
        url_allowed("http://192.0.2.5:99999/")
