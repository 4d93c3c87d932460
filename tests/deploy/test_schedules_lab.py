"""Schedules on a real lab node (the session lab, one agent deployed): `fleet work run-now`
puts the schedule's prompt, exactly, into the agent's own inbox as a request signed by the
agent; a schedule set a minute ahead fires there on its own; the service rates OK in
`systemd-analyze security`; adding a schedule touches only its units, a second deploy changes
nothing, and removing the schedules from the registry removes their units (the dry run lists
exactly what the deploy then does), restarting no agent."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bus.client import BusClient
from bus.keys import OPERATOR, PRIVATE_KEY_ENV, signing_key
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "bezalel"
PROMPT = "Say \"hi\" 50% $HOME ${X} %n \\ `id` ; # é 日本"
UNITS = "/etc/systemd/system/fleet-schedule-bezalel_"
MAX_EXPOSURE = 2.5


def with_schedules(fleet: Fleet, name: str, schedules: dict[str, Any]) -> Path:
    """The lab registry with ``schedules`` for bezalel, beside it (its souls, known_hosts)."""
    data = yaml.safe_load(fleet.registry.read_text())
    data["wizards"][AGENT]["schedules"] = schedules
    path = fleet.registry.parent / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def deployed(fleet: Fleet, registry: Path, *extra: str) -> dict[str, Any]:
    """``fleet deploy --limit bezalel [EXTRA]`` with ``registry``: bezalel's host record."""
    done = fleet.run("deploy", "--limit", AGENT, *extra, registry=registry)
    assert done.returncode == 0, done.stdout + done.stderr
    host: dict[str, Any] = fleet.record(done.stdout)["hosts"][AGENT]
    return host


def requests_from_schedule(fleet: Fleet, schedule: str) -> list[dict[str, Any]]:
    """The requests of ``schedule`` in bezalel's inbox (read with the operator's key)."""
    key = signing_key(OPERATOR, SECRETS["identities"][OPERATOR][PRIVATE_KEY_ENV])
    with BusClient.for_agent(load_registry(fleet.registry), AGENT, key) as client:
        found = client.messages(type="request", limit=1000)["messages"]
    return [message for message in found
            if isinstance(message["payload"], dict)
            and message["payload"].get("schedule") == schedule]


def node_time(fleet: Fleet) -> float:
    return float(fleet.ssh(AGENT, "date +%s.%N"))


def test_schedules_fire_run_now_and_go_away_with_the_registry(
        fleet: Fleet, unit_state: Callable[[], dict[str, str]]) -> None:
    hour = (time.gmtime(node_time(fleet)).tm_hour + 12) % 24  # far from now: never fires here
    nightly = {"on": f"*-*-* {hour:02d}:00:00 UTC", "prompt": PROMPT}
    first = with_schedules(fleet, "registry-schedules-1.yaml", {"nightly": nightly})
    host = deployed(fleet, first)
    assert f"Services | Schedule unit fleet-schedule-{AGENT}_nightly.timer" in host["changed"]
    timer = f"fleet-schedule-{AGENT}_nightly.timer"
    assert fleet.ssh(AGENT, f"systemctl is-active {timer}").strip() == "active"

    # run now: one request, exactly the prompt, from the agent itself, into its own inbox
    done = fleet.run("work", "run-now", AGENT, "nightly", registry=first)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"{AGENT}: schedule nightly ran (fleet-schedule-{AGENT}_nightly.service): its "
           f"request is queued for {AGENT}'s inbox\n", "")
    wait_for(lambda: requests_from_schedule(fleet, "nightly"), 30,
             lambda: "the run-now request in the inbox", every=0.5)
    [message] = requests_from_schedule(fleet, "nightly")
    assert (message["from"], message["to"], message["payload"]) == (
        AGENT, AGENT, {"prompt": PROMPT, "schedule": "nightly"})
    assert re.fullmatch(r"schedule-nightly-[0-9a-f]{32}", message["id"]), message["id"]

    unit = f"fleet-schedule-{AGENT}_nightly.service"
    report = fleet.ssh(AGENT, f"systemd-analyze security --no-pager {unit}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", report)
    assert found and float(found.group(1)) <= MAX_EXPOSURE, report
    assert found.group(2) in ("SAFE", "OK"), report  # ≤ 2.5: OK; the loopback rule: 0.9 SAFE

    # a schedule a minute ahead: adding it writes its units, reloads and starts its timer
    target = int(node_time(fleet)) + 75  # about a minute ahead, with room for two deploys
    soon = {"on": time.strftime("*-*-* %H:%M:%S UTC", time.gmtime(target)), "prompt": "tick"}
    second = with_schedules(fleet, "registry-schedules-2.yaml",
                            {"nightly": nightly, "soon": soon})
    running = unit_state()[AGENT]  # the agent's MainPID and start: no schedule restarts it
    host = deployed(fleet, second)
    assert (host["changed"], host["restarted"]) == ([
        f"Services | Schedule unit fleet-schedule-{AGENT}_soon.service",
        f"Services | Schedule unit fleet-schedule-{AGENT}_soon.timer",
        "Services | systemd daemon-reload (unit file changed)",
        "Services | Schedule timers enabled and running (restarted when their file changed)",
    ], False)
    again = deployed(fleet, second)
    assert (again["changed"], again["restarted"]) == ([], False)
    assert node_time(fleet) < target - 2, "the deploys took longer than the minute ahead"
    wait_for(lambda: requests_from_schedule(fleet, "soon"), target - node_time(fleet) + 45,
             lambda: "the timer's request in the inbox", every=1.0)
    [tick] = requests_from_schedule(fleet, "soon")
    assert (tick["from"], tick["payload"]) == (AGENT, {"prompt": "tick", "schedule": "soon"})
    assert len(requests_from_schedule(fleet, "nightly")) == 1

    # removed from the registry: the dry run plans exactly what the deploy then does
    plan = fleet.run("deploy", "--dry", "--limit", AGENT)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    planned = fleet.record(plan.stdout)["hosts"][AGENT]["planned"]
    removal = [
        *(f"Services | Removed schedule fleet-schedule-{AGENT}_{name}.timer stopped and "
          "disabled" for name in ("nightly", "soon")),
        *(f"Services | Removed schedule unit fleet-schedule-{AGENT}_{name}.{kind}"
          for name in ("nightly", "soon") for kind in ("service", "timer")),
        "Services | systemd daemon-reload (schedule units removed)"]
    assert planned == removal
    host = deployed(fleet, fleet.registry)
    assert (host["changed"], host["restarted"]) == (removal, False)
    assert unit_state()[AGENT] == running
    assert fleet.ssh(AGENT, f"ls {UNITS}* 2>/dev/null; systemctl list-units --all --no-legend "
                            "'fleet-schedule-*'; systemctl list-unit-files --no-legend "
                            "'fleet-schedule-*'; true").strip() == ""
    assert deployed(fleet, fleet.registry)["changed"] == []
