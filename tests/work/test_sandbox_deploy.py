"""The deploy hands the registry's ``work:`` section to the sandbox phase, so the policy the
node gets runs the registry's test command and lets it reach the forges named there only."""

from __future__ import annotations

import ast
import json
import socket
from pathlib import Path

import pytest
import yaml

from deploys import sandbox
from fleet.control import render
from fleet.core.registry import parse_registry
from fleet.core.sandbox_policy import SandboxPolicyError

REPO = Path(__file__).resolve().parents[2]
WIZARDS = {"a": {"host": "192.0.2.1", "role": "orchestrator", "model": "m"},
           "b": {"host": "192.0.2.2", "role": "worker", "model": "m", "capabilities": ["code"]}}
SOURCES = [
    {"forge": "gitea", "api_url": "http://192.0.2.5:3000/api/v1",
     "git_url": "http://192.0.2.5:3000/acme/shop.git", "repo": "acme/shop", "label": "fleet",
     "token": "GITEA_TOKEN"},
    {"forge": "gitlab", "api_url": "https://198.51.100.7/api/v4",
     "git_url": "http://198.51.100.8:8080/group/sub/shop.git", "repo": "group/sub/shop",
     "label": "fleet", "token": "GITLAB_TOKEN"}]


def rendered_policy(work: dict[str, object] | None) -> dict[str, object]:
    data: dict[str, object] = {"wizards": WIZARDS}
    if work is not None:
        data["work"] = work
    registry = parse_registry(yaml.safe_dump(data, sort_keys=False), Path("registry.yaml"))
    loaded: dict[str, object] = json.loads(
        render.config_json(sandbox.policy(registry.work).to_dict()))
    return loaded


def test_the_policy_runs_the_registrys_test_command_and_allows_its_forges_only() -> None:
    policy = rendered_policy({"test_command": ["make", "check"], "sources": SOURCES})
    assert policy["argv"] == ["make", "check"]
    assert policy["allow"] == [{"ip": "192.0.2.5", "port": 3000},
                               {"ip": "198.51.100.7", "port": 443},
                               {"ip": "198.51.100.8", "port": 8080}]


def test_without_a_work_section_the_policy_has_no_network() -> None:
    policy = rendered_policy(None)
    assert policy["allow"] == [] and policy["argv"] == ["python3", "-m", "pytest", "-q"]


def test_the_deploy_passes_the_registrys_work_section_to_the_sandbox_phase() -> None:
    tree = ast.parse((REPO / "deploy.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "sandbox.run"]
    assert [ast.unparse(call) for call in calls] == ["sandbox.run(ctx, ctx.registry.work)"]


def test_a_forge_host_name_is_pinned_to_what_the_controller_resolves() -> None:
    """Forges named by DNS name: the deploy resolves each name once on the controller and
    pins its addresses in every agent's policy; a name that does not resolve is preflight's
    reason to refuse the node, before anything changes."""
    named = [{**SOURCES[0], "api_url": "https://forge.example/api/v1",
              "git_url": "https://forge.example/acme/shop.git"}]
    registry = parse_registry(yaml.safe_dump({"wizards": WIZARDS, "work": {
        "test_command": ["make"], "sources": named}}, sort_keys=False), Path("registry.yaml"))
    pinned = sandbox.policy(registry.work, resolve=lambda host, port: ["192.0.2.44"])
    assert [(item.ip, item.port) for item in pinned.allow] == [("192.0.2.44", 443)]

    def unresolvable(host: str, port: int) -> list[str]:
        raise SandboxPolicyError(f"the forge host {host!r} does not resolve (test)")

    assert sandbox.policy_problem(registry.work, unresolvable) == (
        "the forge host 'forge.example' does not resolve (test)")
    assert sandbox.policy_problem(registry.work, lambda host, port: ["192.0.2.44"]) == ""
    assert sandbox.policy_problem(None) == ""


def test_the_controllers_resolver_gives_addresses_a_firewall_rule_holds() -> None:
    """``localhost`` (resolved from /etc/hosts: no query leaves the machine)."""
    found = sandbox.resolved("localhost", 80)
    assert found and set(found) <= {"127.0.0.1", "::1"}
    assert sandbox.resolved("localhost", 80) is found  # once per deploy
    with pytest.raises(SandboxPolicyError, match="does not resolve"):
        sandbox.resolved("bad..name", 80)  # refused by the resolver itself, nothing sent


def _answers(*addresses: str) -> list[tuple[object, ...]]:
    """What ``socket.getaddrinfo`` gives for ``addresses`` (IPv6 ones with a scope id)."""
    return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (address, 443, 0, 0) if ":" in address else (address, 443))
            for address in addresses]


@pytest.mark.parametrize(("answers", "pinned"), [
    (("0.0.0.0", "::"), None),  # a DNS blocklist's answer
    (("fe80::1%eth0",), None),
    (("0.0.0.0", "192.0.2.9"), ("192.0.2.9",)),
])
def test_a_name_is_pinned_only_to_addresses_of_a_server(
        monkeypatch: pytest.MonkeyPatch, answers: tuple[str, ...],
        pinned: tuple[str, ...] | None) -> None:
    """Outside attack r37: a name resolving to 0.0.0.0 (a sinkholed name) was pinned as the
    forge's address, so preflight passed and the sandbox could reach no forge (a connection
    to the unspecified address stays on the node). The resolver's answer is stubbed: nothing
    is sent."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: _answers(*answers))
    sandbox.resolved.cache_clear()
    try:
        if pinned is None:
            with pytest.raises(SandboxPolicyError, match="resolved to no address a firewall "
                                                         "rule can hold"):
                sandbox.resolved("forge.example", 443)
        else:
            assert sandbox.resolved("forge.example", 443) == pinned
    finally:
        sandbox.resolved.cache_clear()


def test_more_pinned_addresses_than_the_sandbox_holds_are_named_as_such() -> None:
    """Three sources on CDN names of 8 addresses each passed `fleet registry validate` and
    the deploy refused them saying only 'allow: not a list of at most 32 entries'."""
    named = [{**SOURCES[0], "api_url": f"https://api{n}.example/v1",
              "git_url": f"https://git{n}.example/acme/s{n}.git", "repo": f"acme/s{n}"}
             for n in range(3)]
    registry = parse_registry(yaml.safe_dump({"wizards": WIZARDS, "work": {
        "test_command": ["make"], "sources": named}}, sort_keys=False), Path("registry.yaml"))
    hosts: dict[str, int] = {}

    def eight(host: str, port: int) -> list[str]:
        base = hosts.setdefault(host, len(hosts)) * 8
        return [f"198.51.100.{base + n + 1}" for n in range(8)]

    assert sandbox.policy_problem(registry.work, eight) == (
        "allow: the forge URLs come to 48 addresses and ports (a DNS name counts each address "
        "it resolves to); the sandbox allows at most 32: list fewer forge hosts, or one host "
        "for a source's api_url and git_url")
