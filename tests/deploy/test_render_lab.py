"""systemd's own parser on a lab node reads the units :mod:`fleet.control.render` writes for an
agent whose registry holds hostile but valid values (quotes, ``%``, ``$``, spaces, backslashes,
Unicode): ``systemd-analyze verify`` finds nothing, and the loaded unit's ``Environment`` and
``ExecStart`` (read over D-Bus as JSON: exact strings) are exactly the registry's values; a
schedule's timer holds exactly its calendar expression. Once
for a registry written by hand, and as a property test for registries drawn by the unit
tests' strategy (``tests/registry/test_render.py``)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings

from deploys.context import AgentContext
from deploys.schedules import service_text, timer_text
from deploys.services import runtime_unit_text, unit_text
from fleet import lab
from fleet.core.errors import RegistryError
from fleet.core.registry import load_registry, parse_registry
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.registry.test_render import REGISTRY, agents, context, load
from tests.registry.test_schedules import registry_text, schedule_entries

pytestmark = [pytest.mark.lab]
PROGRAMS = ("python3", "/usr/bin/env")  # on the node: systemd-analyze checks they exist
MODEL = "m \"q\" 'x' %n %% $HOME ${X} \\ \\\\ é 日本 `id`"
URL = "http://10.0.0.1:8650/v1/%25$HOME'\"\\é"
COMMAND = ["python3", "-c", "import sys; print(sys.argv)", "a b", "%h %% $USER ${X} $$",
           "\\\" ' \\n", "ü ✓ \U0001f600"]


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Path, str]]:
    """One lab node (its ssh_config and name), taken down afterwards."""
    skip_unless_root()
    claimed = claim_test_lab("render")
    try:
        lab.down(claimed.lab)
        registry = lab.up(load_registry(EXAMPLE_REGISTRY), nodes=1, lab=claimed.lab)
        yield registry.parent / "ssh_config", next(iter(load_registry(registry).agents))
    finally:
        lab.down(claimed.lab)
        claimed.release()


def ssh(node: tuple[Path, str], command: str, stdin: str | None = None) -> str:
    done = subprocess.run(["ssh", "-F", str(node[0]), node[1], command], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def hostile_units(name: str) -> tuple[str, str]:
    """The agent and runtime units of agent ``name`` with hostile values (validated first)."""
    registry = parse_registry(yaml.safe_dump({"wizards": {name: {
        "host": "192.0.2.10", "role": "worker", "model": MODEL,
        "provider": {"base_url": URL, "api_key": "MODEL_KEY"},
        "runtime": {"command": COMMAND}}}}, allow_unicode=True),
        Path(tempfile.gettempdir()) / "registry.yaml")
    agent = registry.get(name)
    ctx = AgentContext(agent=agent, registry=registry, soul_source=Path("/dev/null"))
    return unit_text(ctx), runtime_unit_text(ctx)


def busctl_property(node: tuple[Path, str], unit: str, name: str,
                    kind: str = "Service") -> object:
    """A property of a loaded unit (a ``Service``, a ``Timer``), exactly, from systemd over
    D-Bus (JSON)."""
    path = json.loads(ssh(node, "busctl --json=short call org.freedesktop.systemd1 "
                                "/org/freedesktop/systemd1 org.freedesktop.systemd1.Manager "
                                f"LoadUnit s {unit}"))["data"][0]
    return json.loads(ssh(node, f"busctl --json=short get-property org.freedesktop.systemd1 "
                                f"{path} org.freedesktop.systemd1.{kind} {name}"))["data"]


@contextmanager
def loaded_units(node: tuple[Path, str], units: dict[str, str], marker: str) -> Iterator[None]:
    """``units`` (file name: text) written to the node, verified by ``systemd-analyze verify``
    (no complaint naming ``marker``) and loaded; removed again afterwards."""
    for unit, text in units.items():
        ssh(node, f"cat > /etc/systemd/system/{unit}", stdin=text)
    paths = " ".join(f"/etc/systemd/system/{unit}" for unit in units)
    try:
        verify = subprocess.run(["ssh", "-F", str(node[0]), node[1],
                                 f"systemd-analyze verify {paths}"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert verify.returncode == 0 and marker not in verify.stdout + verify.stderr, (
            verify.stdout + verify.stderr)
        ssh(node, "systemctl daemon-reload")
        yield
    finally:
        ssh(node, f"rm -f {paths} && systemctl daemon-reload")


def test_systemd_reads_hostile_registry_values_exactly(node: tuple[Path, str]) -> None:
    name = "render-probe"
    agent_unit, runtime_unit = hostile_units(name)
    units = {f"fleet-agent-{name}.service": agent_unit,
             f"fleet-runtime-{name}.service": runtime_unit}
    with loaded_units(node, units, name):
        runtime = f"fleet-runtime-{name}.service"
        assert busctl_property(node, runtime, "Environment") == [
            "PYTHONPATH=/opt/fleet/current/site", f"FLEET_MODEL={MODEL}",
            f"FLEET_PROVIDER_URL={URL}", "FLEET_PROVIDER_KEY_ENV=MODEL_KEY",
            "FLEET_GATEWAY_URL=http://127.0.0.1:8646"]
        exec_start = busctl_property(node, runtime, "ExecStart")
        assert isinstance(exec_start, list) and len(exec_start) == 1
        # systemd keeps "$$" in the loaded argv and turns it into "$" when it runs the
        # command; a single "$" would be a variable: none is left
        assert exec_start[0][1] == [arg.replace("$", "$$") for arg in COMMAND]
        assert ssh(node, f"systemctl show -p ExecStartPre --value {runtime}").strip() == ""


@settings(max_examples=12, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(data=agents())
def test_systemd_reads_every_accepted_registry_exactly(node: tuple[Path, str],
                                                       data: dict[str, Any]) -> None:
    """The property test on the node: registries the validator accepts (drawn by the unit
    test's strategy: hostile text in every free field) render units that systemd's own
    parser verifies and loads with exactly the intended environment and command."""
    if "runtime" in data and data["runtime"]["command"][0] not in PROGRAMS:
        data = {**data, "runtime": {"command": ["python3", *data["runtime"]["command"][1:]]}}
    registry = load({"wizards": {"a": data}})
    assume(registry is not None)
    assert registry is not None
    ctx = context(registry)
    agent = ctx.agent
    units = {"fleet-agent-a.service": unit_text(ctx),
             "fleet-runtime-a.service": runtime_unit_text(ctx)}
    with loaded_units(node, units, "fleet-"):
        runtime = "fleet-runtime-a.service"
        assert busctl_property(node, runtime, "Environment") == [
            "PYTHONPATH=/opt/fleet/current/site", f"FLEET_MODEL={agent.model}",
            f"FLEET_PROVIDER_URL={agent.provider_url or ''}",
            f"FLEET_PROVIDER_KEY_ENV={agent.provider_key or ''}",
            "FLEET_GATEWAY_URL=http://127.0.0.1:8646"]
        expected = (list(agent.runtime_command) if agent.runtime == "command"
                    else ["/usr/bin/python3", "-m", "fleet.runtime"])
        exec_start = busctl_property(node, runtime, "ExecStart")
        assert isinstance(exec_start, list) and len(exec_start) == 1
        assert exec_start[0][1] == [arg.replace("$", "$$") for arg in expected]
        assert ssh(node, f"systemctl show -p ExecStartPre --value {runtime}").strip() == ""


@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(entries=schedule_entries())
def test_systemd_reads_every_accepted_schedule_exactly(node: tuple[Path, str],
                                                      entries: dict[str, Any]) -> None:
    """Schedules the validator accepts (hostile prompts, calendar expressions valid or not)
    render a service and a timer that systemd's own parser verifies and loads with exactly
    the prompt, and the calendar expression the registry holds (systemd's normalized form of
    the registry's value)."""
    try:
        registry = parse_registry(registry_text(entries), REGISTRY)
    except RegistryError:
        assume(False)
        return
    agent = registry.get("a")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=REGISTRY.parent / "x.md")
    item = agent.schedules[0]
    timer, service = ctx.schedule_units(item)
    with loaded_units(node, {service: service_text(ctx, item), timer: timer_text(ctx, item)},
                      "fleet-"):
        env = busctl_property(node, service, "Environment")
        assert env == ["PYTHONPATH=/opt/fleet/current/site", f"FLEET_SCHEDULE={item.name}",
                       f"FLEET_SCHEDULE_PROMPT={item.prompt}",
                       *([f"FLEET_SCHEDULE_CAPABILITY={item.capability}"]
                         if item.capability else []),
                       "FLEET_GATEWAY_URL=http://127.0.0.1:8646"]
        calendar = busctl_property(node, timer, "TimersCalendar", "Timer")
        said = ssh(node, f"systemd-analyze calendar -- {shlex.quote(item.on)}")
        normalized = re.search(r"Normalized form: (.*)", said)
        assert normalized and isinstance(calendar, list)
        assert [entry[:2] for entry in calendar] == [["OnCalendar", normalized.group(1)]]
