"""Acceptance of multi-region fleets on a lab of 3 regions x 2 nodes (issue 13).

A deploy runs the canary, then region by region (the hosts' audit times prove the order); a
region cut off during a deploy is reported unreachable and skipped while the others complete
(the run is ``partial``); after healing it, a deploy brings every agent to healthy, a bus
message sent to the cut-off region meanwhile arrives exactly once, and the sender's /metrics
show its wait under the recipient's region. Then, through the CLI: ``--region`` deploys one
region only; a region with a failed host stops the regions after it, unless its own
``max_failures`` allows the failure; ``--stop-on-unreachable-region`` stops at a cut region.

The regions are 80 ms apart: tc netem where the kernel has sch_netem, else the userspace delay
line (fleet.lab.delayline); only where neither works does the lab run without added latency and
the latency check is skipped (reported in the output).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab import delayline
from fleet.lab.regions import netem_problem
from tests.deploy.conftest import Fleet, make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
REGIONS = [("eu", 2), ("us", 2), ("ap", 2)]
LATENCY_MS = 80
CUT = "us"
SENDER = "ezra-primary"  # the canary, in eu
RECEIVER = "allegro"  # in us


@pytest.fixture(scope="module")
def regional(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A clean clone wired to a fresh lab of 3 regions x 2 nodes, with fresh bus keys."""
    skip_unless_root()
    claimed = claim_test_lab("regions")
    latency = LATENCY_MS if not latency_problem() else 0
    try:
        lab.down(claimed.lab)
        registry = lab.up(load_registry(EXAMPLE_REGISTRY), lab=claimed.lab, regions=REGIONS,
                          latency_ms=latency, jitter_ms=latency / 10)
        fleet = make_fleet(registry, tmp_path_factory.mktemp("regions"))
        secrets = fleet.records.parent / "fresh-secrets.yaml"
        done = fleet.run("init", "--secrets-only", "--secrets", str(secrets))
        assert done.returncode == 0, done.stdout + done.stderr
        fleet.env["FLEET_SECRETS"] = str(secrets)
        fleet.env["FLEET_TEST_LATENCY_MS"] = str(latency)
        yield fleet
    finally:
        if lab.status(claimed.lab):
            lab.partition(claimed.lab, CUT, heal=True)
        lab.down(claimed.lab)
        claimed.release()


def latency_problem() -> str:
    """Why the lab cannot add latency here (neither netem nor the delay line works)."""
    netem = netem_problem()
    return f"{netem}; {delayline.problem()}" if netem and delayline.problem() else ""


def lab_name(fleet: Fleet) -> str:
    return fleet.registry.parent.name


def hosts_by_region(record: dict[str, Any]) -> dict[str, list[str]]:
    regions: dict[str, list[str]] = {}
    for stage in record["stages"]:
        regions.setdefault(stage["region"], []).extend(stage["hosts"])
    return regions


def test_regions_are_apart(regional: Fleet) -> None:
    latency = float(regional.env["FLEET_TEST_LATENCY_MS"])
    if not latency:
        pytest.skip(f"no added latency: {latency_problem()}")
    start = time.monotonic()
    regional.ssh("worker-05", "true")  # ap: several round trips to the controller
    assert time.monotonic() - start >= latency / 1000
    nodes = {r.name: r for r in lab.lab_nodes(lab_name(regional))}
    ports = {a.host: a.ssh_port for a in load_registry(regional.registry)}
    eu, eu_peer, ap = nodes["ezra-primary"], nodes["bezalel"], nodes["worker-05"]
    across = min(connect_seconds(eu.netns, ap.ip, ports[ap.ip]) for _ in range(3))
    within = min(connect_seconds(eu.netns, eu_peer.ip, ports[eu_peer.ip]) for _ in range(3))
    assert latency * 0.9 / 1000 <= across < 0.5, across  # jitter is latency / 10
    assert within < 0.020, within


def connect_seconds(netns: str, address: str, port: int) -> float:
    """Seconds a TCP connect from namespace ``netns`` to ``address:port`` takes."""
    code = ("import socket, sys, time; t = time.monotonic(); "
            "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
            "print(time.monotonic() - t)")
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, address,
                           str(port)], capture_output=True, text=True, check=True, timeout=60)
    return float(done.stdout)


def test_deploy_goes_canary_then_region_by_region(regional: Fleet) -> None:
    done = regional.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = regional.record(done.stdout)
    assert record["status"] == "ok"
    assert record["regions"] == ["eu", "us", "ap"]
    assert [(s["stage"], s["region"], s["hosts"]) for s in record["stages"]] == [
        ("canary", "eu", ["ezra-primary"]), ("workers", "eu", ["bezalel"]),
        ("workers", "us", ["allegro", "worker-04"]), ("workers", "ap", ["worker-05", "worker-06"])]
    finished = [max(record["hosts"][name]["finished"] for name in stage["hosts"])
                for stage in record["stages"]]
    began = [min(record["hosts"][name]["finished"] for name in stage["hosts"])
             for stage in record["stages"]]
    assert finished == sorted(finished)
    assert all(finished[i] <= began[i + 1] for i in range(len(finished) - 1)), record["stages"]
    assert all(entry["status"] == "ok" for entry in record["hosts"].values())


def test_cut_region_is_skipped_and_the_others_complete(regional: Fleet) -> None:
    name = lab_name(regional)
    before = set(regional.records.glob("*.json"))
    deploy = subprocess.Popen(
        [sys.executable, "-c", "from fleet.cli import main; main()", "--registry",
         str(regional.registry), "deploy"], cwd=regional.clone, env=regional.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def started() -> bool:
            assert deploy.poll() is None, deploy.communicate()[0]
            return bool(set(regional.records.glob("*.json")) - before)

        wait_for(started, 120, "the deploy's run record")
        lab.partition(name, CUT)  # the canary deploys now; us comes after eu
        sent = regional.run("bus", "send", RECEIVER, "request", '{"task": "while cut"}',
                            "--from", SENDER, "--id", "cut-1")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        output, _ = deploy.communicate(timeout=600)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    regional.transcript.append(output)
    record = regional.record(output)
    assert deploy.returncode == 1, output
    assert record["status"] == "partial"
    assert record["unreachable_regions"] == [CUT]
    assert "region us is unreachable: skipped; the other regions go on" in output
    # nothing reached the cut region: the message waits in the sender's outbox, tried and failed
    waiting = outbox_rows(regional, SENDER, "cut-1")
    assert [(to, attempts >= 1, bool(error)) for to, attempts, error in waiting] == [
        (RECEIVER, True, True)], waiting
    regions = hosts_by_region(record)
    for region, names in regions.items():
        for host in names:
            entry = record["hosts"][host]
            if region == CUT:
                assert (entry["status"], entry["unreachable"]) == ("skipped", True), entry
                assert entry["reason"].startswith("region us is unreachable"), entry
            else:
                assert entry["status"] == "ok", (host, entry)


def test_after_heal_all_healthy_and_the_message_arrives_once(regional: Fleet) -> None:
    lab.partition(lab_name(regional), CUT, heal=True)
    done = regional.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = regional.record(done.stdout)
    assert record["status"] == "ok"
    assert all(entry["status"] == "ok" for entry in record["hosts"].values())
    wait_for(lambda: received(regional, "cut-1"), 90, "cut-1 in the receiver's inbox", every=1)
    # delivered: no longer in the sender's outbox, so no second delivery can come
    wait_for(lambda: outbox_rows(regional, SENDER, "cut-1") == [], 60,
             "cut-1 to leave the sender's outbox", every=1)
    found = received(regional, "cut-1")
    assert [(m["from"], m["payload"]) for m in found] == [(SENDER, {"task": "while cut"})]
    # the sender's gateway reports the wait by the recipient's region (public /metrics)
    host = yaml.safe_load(regional.registry.read_text())["wizards"][SENDER]["host"]
    metrics = requests.get(f"http://{host}:8646/metrics", timeout=10).text
    found_metrics = dict(re.findall(
        r'fleet_bus_delivery_seconds_(sum|count)\{agent="ezra-primary",region="us"\} (\S+)',
        metrics))
    assert float(found_metrics["count"]) >= 1, metrics
    assert float(found_metrics["sum"]) / float(found_metrics["count"]) > 1.0, metrics


def received(fleet: Fleet, message_id: str) -> list[dict[str, Any]]:
    """The messages with id ``message_id`` in the receiver's inbox (``fleet bus tail``)."""
    tail = fleet.run("bus", "tail", RECEIVER, "--json")
    assert tail.returncode == 0, tail.stdout + tail.stderr
    return [m for line in tail.stdout.splitlines() if (m := json.loads(line))["id"] == message_id]


OUTBOX_QUERY = ("import json, sqlite3, sys; "
                "db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
                "print(json.dumps(db.execute('SELECT recipient, attempts, last_error FROM outbox "
                "WHERE id = ?', (sys.argv[2],)).fetchall()))")


def outbox_rows(fleet: Fleet, agent: str, message_id: str) -> list[tuple[str, int, str | None]]:
    """``message_id`` waiting in ``agent``'s outbox on its node: (recipient, attempts, last
    error) per row, read-only as the agent's user."""
    found = fleet.ssh(agent, f"runuser -u {agent} -- python3 -c {shlex.quote(OUTBOX_QUERY)} "
                             f"/var/lib/fleet/{agent}/bus.sqlite3 {shlex.quote(message_id)}")
    return [(to, attempts, error) for to, attempts, error in json.loads(found)]


LOCK = "/run/fleet-deploy.lock"


def edited(fleet: Fleet, folder: Path, config: dict[str, Any],
           regions: dict[str, dict[str, int]] | None = None) -> Path:
    """A copy of the lab registry (souls beside it): every agent gets ``config``, and
    ``fleet.regions`` becomes ``regions`` when given."""
    data = yaml.safe_load(fleet.registry.read_text())
    for entry in data["wizards"].values():
        entry["config"] = config
    if regions is not None:
        data["fleet"]["regions"] = regions
    folder.mkdir()
    shutil.copytree(fleet.registry.parent / "souls", folder / "souls")
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def configs(fleet: Fleet) -> dict[str, Any]:
    """Every agent's config as its node has it."""
    names = yaml.safe_load(fleet.registry.read_text())["wizards"]
    return {name: json.loads(fleet.ssh(name, f"cat /etc/fleet/{name}/config.json"))["config"]
            for name in names}


def test_region_flag_deploys_that_region_only(regional: Fleet, tmp_path: Path) -> None:
    before = configs(regional)
    done = regional.run("deploy", "--region", "us",
                        registry=edited(regional, tmp_path / "r", {"round": 1}))
    assert done.returncode == 0, done.stdout + done.stderr
    record = regional.record(done.stdout)
    assert sorted(record["hosts"]) == ["allegro", "worker-04"]
    assert configs(regional) == {**before, "allegro": {"round": 1}, "worker-04": {"round": 1}}


def test_a_failed_region_stops_the_later_ones_unless_its_max_failures_allows(
        regional: Fleet, tmp_path: Path) -> None:
    regional.ssh("worker-04", f"mkdir {LOCK} && echo 'elsewhere:1:run-x 9999999999' > {LOCK}/owner")
    try:
        stopped = regional.run("deploy", registry=edited(regional, tmp_path / "a", {"round": 2}))
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        record = regional.record(stopped.stdout)
        assert (record["status"], record["skipped"]) == ("failed", ["worker-05", "worker-06"])
        assert record["hosts"]["worker-04"]["phase"] == "preflight"
        assert record["verdicts"]["2"] == {"go": False, "failures": 1, "allowed": 0}
        assert {name: config for name, config in configs(regional).items()
                if name in ("worker-05", "worker-06")} == {"worker-05": {}, "worker-06": {}}
        allowed = edited(regional, tmp_path / "b", {"round": 3},
                         regions={"eu": {}, "us": {"max_failures": 1}, "ap": {}})
        done = regional.run("deploy", registry=allowed)
        assert done.returncode == 1, done.stdout + done.stderr  # degraded is not ok
        record = regional.record(done.stdout)
        assert (record["status"], record["skipped"]) == ("degraded", [])
        assert record["verdicts"]["2"] == {"go": True, "failures": 1, "allowed": 1}
        assert {name: entry["status"] for name, entry in record["hosts"].items()
                if name != "worker-04"} == dict.fromkeys(
            ["ezra-primary", "bezalel", "allegro", "worker-05", "worker-06"], "ok")
        assert configs(regional)["worker-06"] == {"round": 3}
    finally:
        regional.ssh("worker-04", f"rm -rf {LOCK}")


def test_stop_on_unreachable_region_stops_at_a_cut_region(
        regional: Fleet, tmp_path: Path) -> None:
    lab.partition(lab_name(regional), CUT)
    try:
        done = regional.run("deploy", "--stop-on-unreachable-region",
                            registry=edited(regional, tmp_path / "c", {"round": 4}))
    finally:
        lab.partition(lab_name(regional), CUT, heal=True)
    assert done.returncode == 1, done.stdout + done.stderr
    record = regional.record(done.stdout)
    assert (record["status"], record["unreachable_regions"]) == ("failed", [CUT])
    assert record["skipped"] == ["worker-05", "worker-06"]
    assert "==> stopped: region us is unreachable; the later stages change nothing" in done.stdout
    assert {name: entry["status"] for name, entry in record["hosts"].items()} == {
        "ezra-primary": "ok", "bezalel": "ok", "allegro": "skipped", "worker-04": "skipped",
        "worker-05": "skipped", "worker-06": "skipped"}
    assert configs(regional)["worker-05"] == {"round": 3}
