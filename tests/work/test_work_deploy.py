"""What the deploy gives autonomous work: the orchestrator's intake timer (a schedule unit
pair running ``fleet.node.work.intake``), and the forge tokens only where the work needs
them (least privilege)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from deploys import schedules
from deploys.context import AgentContext
from fleet.control.secrets import Secrets
from fleet.core.envfile import parse_env_entries
from fleet.core.registry import parse_registry
from fleet.node.work.messages import WorkMessageError, checked_branch
from tests.registry import unit_syntax

REGISTRY = Path("/nonexistent/registry.yaml")
AGENTS = {"ezra": {"host": "192.0.2.1", "role": "orchestrator", "model": "m"},
          "coder": {"host": "192.0.2.2", "role": "worker", "model": "m",
                    "capabilities": ["code"]},
          "fixer": {"host": "192.0.2.3", "role": "worker", "model": "m",
                    "capabilities": ["bugs"]},
          "writer": {"host": "192.0.2.4", "role": "worker", "model": "m",
                     "capabilities": ["docs"]}}
WORK = {"test_command": ["make", "test"], "sources": [
    {"forge": "gitea", "api_url": "http://192.0.2.5:3000/api/v1",
     "git_url": "http://192.0.2.5:3000/acme/shop.git", "repo": "acme/shop", "label": "fleet",
     "token": "GITEA_TOKEN", "capability_labels": {"bug": "bugs"}}]}
SECRETS = Secrets(fleet={"GITEA_TOKEN": "gitea-secret-value", "OTHER_KEY": "other"})


def context(name: str, work: dict[str, Any] | None = WORK) -> AgentContext:
    data: dict[str, Any] = {"wizards": AGENTS}
    if work is not None:
        data["work"] = work
    registry = parse_registry(yaml.safe_dump(data, sort_keys=False), REGISTRY)
    return AgentContext(agent=registry.get(name), registry=registry,
                        soul_source=REGISTRY.parent / "x.md", secrets=SECRETS)


def env_names(ctx: AgentContext) -> set[str]:
    return {entry.name for entry in parse_env_entries(ctx.env_file())}


def test_the_forge_token_reaches_the_orchestrator_and_agents_whose_capability_work_needs() -> None:
    holding = {name for name in AGENTS if "GITEA_TOKEN" in env_names(context(name))}
    assert holding == {"ezra", "coder", "fixer"}  # code (the default) and bugs (a label's)
    assert "OTHER_KEY" in env_names(context("writer"))  # other fleet secrets as before
    assert "GITEA_TOKEN" in env_names(context("writer", None))  # no work: nothing withheld


def test_the_orchestrator_gets_an_intake_timer_while_the_registry_has_work() -> None:
    ctx = context("ezra")
    (intake,) = ctx.schedules
    timer, service = ctx.schedule_units(intake)
    assert (timer, service) == ("fleet-schedule-ezra_work-intake.timer",
                                "fleet-schedule-ezra_work-intake.service")
    entries = {(section, key): value for section, key, value in
               unit_syntax.unit_entries(schedules.service_text(ctx, intake))}
    assert entries[("Service", "ExecStart")] == "/usr/bin/python3 -m fleet.node.work.intake"
    assert entries[("Service", "ReadWritePaths")] == ctx.state_dir
    assert entries[("Service", "User")] == ctx.user
    assert ("Service", "IPAddressDeny") not in entries  # it reads the forges
    assert ("Service", "NoNewPrivileges") in entries  # the schedules' sandbox
    timer_entries = {key: value for _, key, value in
                     unit_syntax.unit_entries(schedules.timer_text(ctx, intake))}
    assert timer_entries["OnCalendar"] == "*:0/10"
    assert f"/etc/systemd/system/{timer}" in ctx.managed_paths()  # removed with work:
    hourly = context("ezra", {**WORK, "intake_on": "hourly"})
    assert {key: value for _, key, value in unit_syntax.unit_entries(
        schedules.timer_text(hourly, hourly.schedules[0]))}["OnCalendar"] == "hourly"
    assert context("coder").schedules == [] and context("ezra", None).schedules == []


@given(st.text(max_size=120))
def test_a_base_branch_accepted_is_safe_in_argv_and_refs(value: str) -> None:
    try:
        branch = checked_branch(value)
    except WorkMessageError:
        return
    assert not branch.startswith(("-", ".", "/")) and ".." not in branch
    assert all(char.isascii() and (char.isalnum() or char in "_./-") for char in branch)
    assert not branch.endswith((".lock", "/", "."))  # ends with a letter, digit or '_'
