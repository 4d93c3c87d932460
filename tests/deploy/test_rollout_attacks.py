"""An outside tester's attacks on the rollout's stage hand-off: what each stage's pyinfra
process is asked to deploy, and how the controller and a waiting stage behave when the other
one is killed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.control.inventory import inventory_groups
from fleet.control.rollout import RolloutOptions, plan_waves, pyinfra_command, select
from fleet.core.registry import ROLES, load_registry, parse_registry

REPO = Path(__file__).resolve().parents[2]

CLASHING = """\
fleet:
  name: clash
wizards:
  o: {host: 127.0.0.2, ssh_port: 1, gateway_port: 8601, role: orchestrator,
      model: m}
  code: {host: 127.0.0.3, ssh_port: 1, gateway_port: 8602, role: worker, model: m}
  w2: {host: 127.0.0.4, ssh_port: 1, gateway_port: 8603, role: worker, model: m,
       capabilities: [code]}
"""


def tried_hosts(registry: Path, hosts: list[str]) -> set[str]:
    """The hosts the real pyinfra CLI tries to reach for a rollout stage of ``hosts`` (an
    empty deploy file; every connection is refused on port 1, so nothing is deployed)."""
    deploy = registry.parent / "nothing.py"
    deploy.write_text("")
    command = [str(part) if part != "deploy.py" else str(deploy)
               for part in pyinfra_command(hosts, RolloutOptions())]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "FLEET_REGISTRY": str(registry),
                                            "PYINFRA_PROGRESS": "off"})
    out = done.stdout + done.stderr
    return set(re.findall(r"\[([a-z][a-z0-9-]*)\]\s+Could not connect", out))


def test_a_stage_of_an_agent_named_like_a_capability_deploys_that_agent_only(
        tmp_path: Path) -> None:
    """``--limit code`` names the agent ``code``; pyinfra takes a group of that name first, so
    the capability group ``code`` (the worker ``w2``) must not be called so: the stage would
    deploy ``w2`` and never ``code``, whose stage is then judged without it."""
    path = tmp_path / "registry.yaml"
    path.write_text(CLASHING)
    registry = load_registry(path)
    stages = [hosts for _, hosts in plan_waves(registry, select(registry, ()), 1)]
    assert stages == [["o"], ["code"], ["w2"]]
    assert tried_hosts(path, ["code"]) == {"code"}
    assert tried_hosts(path, ["w2"]) == {"w2"}


names = st.sampled_from(["code", "w2", "review", "capability-code", "gpu", "o"])
capabilities = st.lists(st.sampled_from(["code", "review", "gpu", "worker", "all", "o",
                                         "capability-code", "co.de"]), max_size=3, unique=True)


@settings(max_examples=60, deadline=None)
@given(agents=st.dictionaries(names, st.tuples(st.sampled_from(ROLES), capabilities),
                              min_size=1, max_size=5))
def test_no_inventory_group_is_named_like_an_agent(
        agents: dict[str, tuple[str, list[str]]]) -> None:
    """Whatever the agents' names and capabilities, no inventory group bears an agent's name
    (pyinfra's ``--limit`` would read it as the group), and every capable agent is in a group
    of its capability."""
    text = "wizards:\n" + "".join(
        f"  {name}: {{host: 192.0.2.{index + 1}, role: {role}, model: m, "
        f"capabilities: {json.dumps(caps)}}}\n"
        for index, (name, (role, caps)) in enumerate(agents.items()))
    registry = parse_registry(textwrap.dedent(text), Path("registry.yaml"))
    groups = inventory_groups(registry)
    assert not set(groups) & set(registry.agents)
    for name, (role, caps) in agents.items():
        member_of = {group for group, entries in groups.items()
                     if name in [entry[0] for entry in entries]}
        assert role in member_of
        assert len(member_of) >= 1 + bool(caps), member_of
