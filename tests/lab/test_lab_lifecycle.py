"""Real labs: down leaves nothing behind (also after a failed up), labs run side by side."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from fleet import lab
from fleet.core.errors import LabError
from fleet.core.registry import load_registry
from fleet.lab import network, node, paths, processes
from fleet.lab.bring_up import FAIL_ENV
from tests.lab.leftovers import lab_leftovers
from tests.lab_fixtures import EXAMPLE_REGISTRY, REPO

pytestmark = pytest.mark.lab


def run_on(registry_path: Path, name: str, command: str) -> str:
    """Run ``command`` on a node through the lab's ssh_config (strict host key checking)."""
    config = registry_path.parent / "ssh_config"
    result = subprocess.run(["ssh", "-F", str(config), name, command], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, f"ssh {name} {command!r}: {result.stderr}"
    return result.stdout.strip()


def test_up_refuses_a_lab_that_is_already_up(session_lab_name: str, lab_registry: Path) -> None:
    with pytest.raises(LabError) as info:
        lab.up(load_registry(EXAMPLE_REGISTRY), lab=session_lab_name)
    assert str(info.value) == (f"lab {session_lab_name!r} is already up "
                               f"({lab_registry.parent / 'nodes.json'} exists)")
    assert all(s.running for s in lab.status(session_lab_name))


def test_down_removes_everything(spare_lab: str) -> None:
    registry_path = lab.up(load_registry(EXAMPLE_REGISTRY), lab=spare_lab)
    lab_path = paths.lab_dir(spare_lab)
    index = network.read_index(lab_path)
    assert index is not None
    assert run_on(registry_path, "allegro", "hostname") == "allegro"
    assert len(lab_leftovers(lab_path, index)) > 5  # the check sees a running lab
    lab.down(spare_lab)
    assert lab_leftovers(lab_path, index) == []
    assert lab.status(spare_lab) == []
    lab.down(spare_lab)  # idempotent


def test_failed_up_cleans_up_after_itself(spare_lab: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lab_path = paths.lab_dir(spare_lab)
    index = network.allocate_index(lab_path)  # up keeps a pre-claimed index: we know it
    monkeypatch.setenv(FAIL_ENV, "bezalel")
    with pytest.raises(LabError, match=f"node bezalel: boot failure injected by {FAIL_ENV}"):
        lab.up(load_registry(EXAMPLE_REGISTRY), lab=spare_lab)
    assert lab_leftovers(lab_path, index) == []
    assert network.read_index(lab_path) is None
    monkeypatch.delenv(FAIL_ENV)
    lab.up(load_registry(EXAMPLE_REGISTRY), nodes=1, lab=spare_lab)  # usable again
    assert [s.running for s in lab.status(spare_lab)] == [True]


def test_down_tolerates_half_built_state(spare_lab: str) -> None:
    lab_path = paths.lab_dir(spare_lab)
    index = network.allocate_index(lab_path)
    network.create_bridge(index)
    network.create_node_network(index, 0, "ezra-primary")
    node_paths = node.NodePaths.of(lab_path, "ezra-primary")
    node.mount_overlay(node_paths, next(paths.cache_dir().glob("rootfs-bookworm-*/")))
    assert len(lab_leftovers(lab_path, index)) == 4
    lab.down(spare_lab)
    assert lab_leftovers(lab_path, index) == []


def test_labs_run_side_by_side(session_lab_name: str, lab_registry: Path, spare_lab: str) -> None:
    spare_registry = lab.up(load_registry(EXAMPLE_REGISTRY), nodes=5, lab=spare_lab)
    ours, theirs = load_registry(lab_registry), load_registry(spare_registry)
    assert list(theirs.agents)[3:] == ["worker-04", "worker-05"]
    assert ours.get("bezalel").host.rsplit(".", 1)[0] != theirs.get("bezalel").host.rsplit(
        ".", 1)[0]
    assert run_on(spare_registry, "worker-05", "hostname") == "worker-05"
    lab.down(spare_lab)
    assert all(s.running for s in lab.status(session_lab_name))
    assert run_on(lab_registry, "bezalel", "hostname") == "bezalel"


def test_nodes_have_no_internet_route_but_see_each_other(lab_registry: Path) -> None:
    registry = load_registry(lab_registry)
    routes = run_on(lab_registry, "ezra-primary", "ip -4 route").splitlines()
    subnet = registry.get("ezra-primary").host.rsplit(".", 1)[0]
    assert [route.strip() for route in routes] == [
        f"{subnet}.0/24 dev eth0 proto kernel scope link src {subnet}.10"]
    allegro = registry.get("allegro").host
    assert run_on(lab_registry, "ezra-primary", f"ping -c1 -W2 {allegro} >/dev/null && echo ok"
                  ) == "ok"


def test_host_keys_stay_pinned_across_down_and_up(lab_refresh, lab_registry: Path) -> None:
    known_hosts = (lab_registry.parent / "known_hosts").read_text()
    before = run_on(lab_registry, "allegro", "touch /root/marker; cat /etc/machine-id")
    assert lab_refresh() == lab_registry
    assert (lab_registry.parent / "known_hosts").read_text() == known_hosts
    assert run_on(lab_registry, "allegro", "test -e /root/marker || echo cold") == "cold"
    assert run_on(lab_registry, "allegro", "cat /etc/machine-id") != before


def test_testinfra_ssh_backend_uses_the_ssh_config(lab_registry: Path) -> None:
    testinfra = pytest.importorskip("testinfra")
    host = testinfra.get_host("ssh://bezalel", ssh_config=str(lab_registry.parent / "ssh_config"))
    assert host.file("/etc/hostname").content_string == "bezalel\n"
    assert host.service("ssh").is_running
    assert host.user("fleet-admin").exists
    assert host.run("python3 -c 'import venv, ensurepip; print(1)'").stdout.strip() == "1"


def test_cli_up_status_ssh_down(session_lab_name: str,
                                claim_spare: Callable[[str], str]) -> None:
    # the longest name a lab may have, 31 characters: its SSH sockets must still fit
    spare_lab = claim_spare("x" * (30 - len(session_lab_name)))
    assert len(spare_lab) == 31
    fleet = ["fleet", "--registry", str(REPO / "registry.yaml"), "lab"]
    up = subprocess.run([*fleet, "up", "-n", "2", "--lab", spare_lab], capture_output=True,
                        text=True, timeout=300, check=True)
    registry_path = paths.lab_dir(spare_lab) / "registry.yaml"
    assert f"  export FLEET_REGISTRY={registry_path}\n" in up.stdout
    status = subprocess.run([*fleet, "status", "--lab", spare_lab, "--json"],
                            capture_output=True, text=True, check=True)
    nodes = json.loads(status.stdout)
    assert [(n["name"], n["running"]) for n in nodes] == [("ezra-primary", True),
                                                          ("bezalel", True)]
    ssh = subprocess.run([*fleet, "ssh", "--lab", spare_lab, "bezalel", "echo", "hi", "there"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert ssh.stdout == "hi there\n"
    after = subprocess.run([*fleet, "ssh", "ezra-primary", f"--lab={spare_lab}", "--", "ls",
                            "-d", "/etc"], capture_output=True, text=True, timeout=60,
                           check=True)
    assert after.stdout == "/etc\n"
    index = network.read_index(paths.lab_dir(spare_lab))
    assert index is not None and paths.ssh_control_dir(index).is_dir()
    down = subprocess.run([*fleet, "down", "--lab", spare_lab], capture_output=True, text=True,
                          timeout=120, check=True)
    assert down.stdout == f"Lab {spare_lab!r} is down.\n"
    assert not paths.ssh_control_dir(index).exists()


def test_cli_up_takes_the_regions_from_the_registry(claim_spare: Callable[[str], str],
                                                    tmp_path: Path) -> None:
    """A registry with ``fleet.regions`` boots each agent's node in the agent's region: the
    lab's status and registry show them, and cutting a region cuts off those nodes only."""
    spare_lab = claim_spare("regions")
    data = yaml.safe_load(EXAMPLE_REGISTRY.read_text())
    data["fleet"]["regions"] = ["us-east", "eu-central"]  # rollout order, not the file's
    wanted = {name: entry["region"] for name, entry in data["wizards"].items()}
    assert sorted(set(wanted.values())) == ["eu-central", "us-east"]
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copytree(EXAMPLE_REGISTRY.parent / "souls", tmp_path / "souls")
    fleet = [sys.executable, "-m", "fleet", "--registry", str(registry), "lab"]
    subprocess.run([*fleet, "up", "--lab", spare_lab], capture_output=True, text=True,
                   timeout=300, check=True)
    status = subprocess.run([*fleet, "status", "--lab", spare_lab, "--json"],
                            capture_output=True, text=True, check=True)
    assert {n["name"]: n["region"] for n in json.loads(status.stdout)} == wanted
    written = yaml.safe_load((paths.lab_dir(spare_lab) / "registry.yaml").read_text())
    assert written["fleet"]["regions"] == ["us-east", "eu-central"]
    assert {name: entry["region"] for name, entry in written["wizards"].items()} == wanted
    cut = subprocess.run([*fleet, "partition", "us-east", "--lab", spare_lab],
                         capture_output=True, text=True, timeout=60, check=True)
    us = sorted(name for name, region in wanted.items() if region == "us-east")
    assert all(name in cut.stdout for name in us), cut.stdout
    lab_registry = paths.lab_dir(spare_lab) / "registry.yaml"
    reached = {name: subprocess.run(
        ["ssh", "-F", str(lab_registry.parent / "ssh_config"), "-o", "ConnectTimeout=3", name,
         "true"], capture_output=True, timeout=60, check=False).returncode == 0
        for name in wanted}
    assert reached == {name: name not in us for name in wanted}


def test_up_recovers_a_lab_whose_nodes_were_killed(spare_lab: str) -> None:
    lab.up(load_registry(EXAMPLE_REGISTRY), nodes=2, lab=spare_lab)
    for cgroup in paths.cgroup_dirs(spare_lab)[-1:]:
        (cgroup / "cgroup.kill").write_text("1")  # as after `kill -9` or a crash
    processes.wait_gone([s.pid for s in lab.status(spare_lab) if s.pid], 10)
    assert not any(s.running for s in lab.status(spare_lab))
    registry_path = lab.up(load_registry(EXAMPLE_REGISTRY), nodes=1, lab=spare_lab)
    assert run_on(registry_path, "ezra-primary", "hostname") == "ezra-primary"


def test_sigterm_during_cli_up_cleans_up(spare_lab: str) -> None:
    lab_path = paths.lab_dir(spare_lab)
    index = network.allocate_index(lab_path)
    with subprocess.Popen(["fleet", "--registry", str(EXAMPLE_REGISTRY), "lab", "up",
                           "--lab", spare_lab], stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("booting"):
                break
        proc.terminate()
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 1, rest
    assert rest.endswith(f"Error: start of lab {spare_lab!r} was cancelled\n")
    assert lab_leftovers(lab_path, index) == []


def test_two_labs_start_at_the_same_time(claim_spare) -> None:
    names = [claim_spare("a"), claim_spare("b")]
    registry = load_registry(EXAMPLE_REGISTRY)
    results: dict[str, Path | BaseException] = {}

    def start(name: str) -> None:
        try:
            results[name] = lab.up(registry, nodes=2, lab=name)
        except BaseException as exc:
            results[name] = exc

    threads = [threading.Thread(target=start, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    indices = {network.read_index(paths.lab_dir(name)) for name in names}
    assert len(indices) == 2
    for name in names:
        registry_path = results[name]
        assert isinstance(registry_path, Path), registry_path
        assert run_on(registry_path, "bezalel", "hostname") == "bezalel"
