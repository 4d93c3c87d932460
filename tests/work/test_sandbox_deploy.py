"""The deploy hands the registry's ``work:`` section to the sandbox phase, so the policy the
node gets runs the registry's test command and lets it reach the forges named there only."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from deploys import sandbox
from fleet.control import render
from fleet.core.registry import parse_registry

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
