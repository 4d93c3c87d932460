"""Unit tests (no root): addressing, node plan, lab registry, ssh_config, known_hosts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fleet.core.errors import LabError
from fleet.core.registry import load_registry, parse_registry
from fleet.lab import network
from fleet.lab.registry_writer import (
    known_hosts_text,
    lab_registry_yaml,
    plan_nodes,
    ssh_config_text,
)
from tests.lab_fixtures import EXAMPLE_REGISTRY, REPO


@pytest.fixture
def registry():
    return load_registry(EXAMPLE_REGISTRY)


def test_addresses_follow_the_lab_index() -> None:
    assert network.bridge_name(3) == "flbr3"
    assert network.controller_ip(3) == "10.231.3.1"
    assert [network.node_ip(3, i) for i in (0, 1, 244)] == [
        "10.231.3.10", "10.231.3.11", "10.231.3.254"]
    assert network.netns_name(3, "bezalel") == "fl3-bezalel"
    assert network.veth_name(254, 244) == "fl254v244"
    assert all(len(n) <= 15 for n in (network.bridge_name(254), network.veth_name(254, 244)))


def test_node_ip_out_of_range_names_the_limit() -> None:
    with pytest.raises(LabError, match=r"node number 246 is out of range: a lab holds at most "
                                       r"245 nodes"):
        network.node_ip(0, 245)


def test_free_index_skips_claimed_indices_and_leftover_bridges() -> None:
    assert network.free_index(set(), lambda _: False) == 0
    assert network.free_index({0, 1}, lambda _: False, preferred=7) == 7
    assert network.free_index({0, 7}, lambda _: False, preferred=7) == 1
    assert network.free_index({0, 1, 3}, lambda _: False) == 2
    assert network.free_index({0, 1}, lambda name: name == "flbr2") == 3
    with pytest.raises(LabError, match="all 255 lab subnets are in use"):
        network.free_index(set(range(255)), lambda _: False)


def test_allocate_index_is_atomic_and_sticky(tmp_path: Path) -> None:
    labs = [tmp_path / f"lab{n}" for n in range(8)]
    results: dict[str, int] = {}

    def take(path: Path) -> None:
        results[path.name] = network.allocate_index(path)

    threads = [threading.Thread(target=take, args=(p,)) for p in labs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    indices = sorted(results.values())
    assert len(set(indices)) == 8
    assert network.allocate_index(labs[0]) == results["lab0"]
    assert network.read_index(labs[5]) == results["lab5"]


def test_plan_takes_the_first_n_agents(registry) -> None:
    plan = plan_nodes(registry, 2, 4)
    assert [(n.name, n.ip, n.position) for n in plan] == [
        ("ezra-primary", "10.231.4.10", 0), ("bezalel", "10.231.4.11", 1)]


def test_plan_adds_workers_beyond_the_registry(registry) -> None:
    plan = plan_nodes(registry, 5, 0)
    assert [n.name for n in plan] == ["ezra-primary", "bezalel", "allegro", "worker-04",
                                      "worker-05"]
    extra = plan[4].agent
    allegro = registry.get("allegro")
    assert (extra.role, extra.model, extra.capabilities) == ("worker", allegro.model, ())
    assert extra.soul == str((REPO / "souls/allegro.md").resolve())
    assert extra.health_endpoint == "http://10.231.0.14:8646/health"


@pytest.mark.parametrize("count", [0, 246])
def test_plan_rejects_impossible_sizes(registry, count: int) -> None:
    with pytest.raises(LabError, match=rf"-n {count} is out of range: a lab has 1 to 245 nodes"):
        plan_nodes(registry, count, 0)


def test_lab_registry_validates_and_rewrites_hosts(registry, tmp_path: Path) -> None:
    plan = plan_nodes(registry, 4, 2)
    text = lab_registry_yaml(registry, plan, "demo", tmp_path)
    lab = parse_registry(text, tmp_path / "registry.yaml")
    assert (lab.name, lab.ssh_key, lab.known_hosts) == (
        "lab-demo", str(tmp_path / "id_ed25519"), str(tmp_path / "known_hosts"))
    ezra = lab.get("ezra-primary")
    original = registry.get("ezra-primary")
    assert ezra.host == "10.231.2.10"
    assert ezra.health_endpoint == "http://10.231.2.10:8646/health"
    assert ezra.soul == "souls/ezra-primary.md"  # a copy inside the lab's folder
    assert lab.soul_path(ezra) == tmp_path / "souls/ezra-primary.md"
    assert (ezra.capabilities, ezra.description, ezra.provider, ezra.region) == (
        original.capabilities, original.description, original.provider, original.region)
    assert list(lab.agents) == ["ezra-primary", "bezalel", "allegro", "worker-04"]


def test_ssh_config_has_one_strict_shared_host_block(registry, tmp_path: Path) -> None:
    plan = plan_nodes(registry, 1, 0)
    assert ssh_config_text(plan, tmp_path, tmp_path / "cm") == (
        "Host ezra-primary\n"
        "    HostName 10.231.0.10\n"
        "    Port 22\n"
        "    User root\n"
        "    BatchMode yes\n"
        "    StrictHostKeyChecking yes\n"
        f"    UserKnownHostsFile {tmp_path}/known_hosts\n"
        "    GlobalKnownHostsFile /dev/null\n"
        "    UpdateHostKeys no\n"
        f"    IdentityFile {tmp_path}/id_ed25519\n"
        "    IdentitiesOnly yes\n"
        "    ControlMaster auto\n"
        f"    ControlPath {tmp_path}/cm/%C\n"
        "    ControlPersist 60s\n"
    )


def test_known_hosts_pins_ip_and_name(registry) -> None:
    plan = plan_nodes(registry, 2, 0)
    keys = {"ezra-primary": "ssh-ed25519 AAAA1", "bezalel": "ssh-ed25519 AAAA2"}
    assert known_hosts_text(plan, keys) == (
        "10.231.0.10,ezra-primary ssh-ed25519 AAAA1\n"
        "10.231.0.11,bezalel ssh-ed25519 AAAA2\n")


def test_ssh_user_lab_reaches_nodes_as_that_sudo_user(registry, tmp_path: Path) -> None:
    plan = plan_nodes(registry, 2, 0, ssh_user="deploy")
    assert [n.agent.ssh_user for n in plan] == ["deploy", "deploy"]
    lab = parse_registry(lab_registry_yaml(registry, plan, "sudo", tmp_path),
                         tmp_path / "registry.yaml")
    assert (lab.become, lab.get("bezalel").ssh_user) == ("sudo", "deploy")
    assert "    User deploy\n" in ssh_config_text(plan, tmp_path, tmp_path / "cm", root_login=False)
    assert "    User root\n" in ssh_config_text(plan, tmp_path, tmp_path / "cm")
    plain = parse_registry(lab_registry_yaml(registry, plan_nodes(registry, 1, 0), "x",
                                             tmp_path), tmp_path / "registry.yaml")
    assert plain.become is None


def test_root_login_is_refused_on_ssh_user_nodes(tmp_path: Path) -> None:
    from fleet.lab.node import ROOT_LOGIN_OFF, inject_identity

    root = tmp_path / "root"
    for folder in ("etc/ssh/sshd_config.d", "root", "home/deploy", "home/fleet-admin"):
        (root / folder).mkdir(parents=True)
    key = tmp_path / "host_key"
    key.write_text("private\n")
    (tmp_path / "host_key.pub").write_text("public\n")
    inject_identity(root, "n1", key, "ssh-ed25519 AAAA", 22, "deploy", {}, root_login=False)
    assert (root / ROOT_LOGIN_OFF).read_text() == "PermitRootLogin no\n"
    keys = root / "home/deploy/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA fleet-lab\n"


def test_regions_spec_gives_each_node_its_region(registry, tmp_path: Path) -> None:
    from dataclasses import replace

    from fleet.core.registry import Region
    from fleet.lab.regions import assign, parse_spec

    spec = parse_spec("eu:2,us:1,ap:2")
    assert spec == [("eu", 2), ("us", 1), ("ap", 2)]
    with_regions = replace(registry, regions=tuple(Region(name) for name, _ in spec))
    plan = plan_nodes(with_regions, None, 4, regions=assign(spec))
    assert [(n.name, n.agent.region) for n in plan] == [
        ("ezra-primary", "eu"), ("bezalel", "eu"), ("allegro", "us"), ("worker-04", "ap"),
        ("worker-05", "ap")]
    text = lab_registry_yaml(with_regions, plan, "t", tmp_path)
    for node in plan:
        (tmp_path / "souls").mkdir(exist_ok=True)
        (tmp_path / "souls" / f"{node.name}.md").write_text("soul\n")
    lab_registry = parse_registry(text, tmp_path / "registry.yaml")
    assert lab_registry.region_order() == ["eu", "us", "ap"]
    with pytest.raises(LabError, match=r"-n 3 does not match the 5 nodes of --regions"):
        plan_nodes(with_regions, 3, 4, regions=assign(spec))


@pytest.mark.parametrize(("spec", "message"), [
    ("eu:2,eu:1", "region 'eu' is listed twice"),
    ("eu:0", "'eu:0' is not NAME:COUNT"),
    ("EU:2", "'EU:2' is not NAME:COUNT"),
    ("eu:2\n", "is not NAME:COUNT"),
])
def test_bad_regions_spec_is_named(spec: str, message: str) -> None:
    from fleet.lab.regions import parse_spec

    with pytest.raises(LabError, match=message):
        parse_spec(spec)


def test_a_lab_gets_its_last_index_back_and_others_leave_it_while_they_can(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in CI: a lab taken down and up again while other labs came and went got another
    subnet, so its addresses (and the host keys pinned for them) changed."""
    monkeypatch.setattr(network, "link_exists", lambda name: False)
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    assert [network.allocate_index(path) for path in (first, second)] == [0, 1]
    (second / network.INDEX_FILE).unlink()  # as `down` leaves it
    (second / network.LAST_INDEX_FILE).write_text("1\n")
    (first / network.INDEX_FILE).unlink()
    (first / network.LAST_INDEX_FILE).write_text("0\n")
    assert network.allocate_index(third) == 2  # not 0 or 1: they are kept for their labs
    assert network.allocate_index(second) == 1 and network.allocate_index(first) == 0
    for path in (first, second, third):
        (path / network.INDEX_FILE).unlink()
    (third / network.LAST_INDEX_FILE).write_text("2\n")
    monkeypatch.setattr(network, "MAX_INDEX", 2)
    fourth = tmp_path / "fourth"
    assert network.allocate_index(fourth) == 0  # all kept: the lowest no lab holds
