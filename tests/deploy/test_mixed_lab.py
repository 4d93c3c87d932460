"""Mixed Debian releases: one release runs on each node's own Python. Unit checks of the lab
plan and of preflight's Python rule; on the lab, a Debian 12 (Python 3.11) and a Debian 13
(Python 3.13) node deployed side by side, both healthy, each loading the compiled modules built
for its own interpreter, and a second deploy changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import yaml

from deploys import preflight
from fleet import lab
from fleet.errors import LabError
from fleet.lab.registry_writer import plan_nodes
from fleet.registry import load_registry
from tests.deploy.conftest import Fleet, make_fleet
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_lab, skip_unless_root

RELEASES = {"ezra-primary": ("bookworm", "3 11"), "bezalel": ("trixie", "3 13")}
GOOD = {"os": "debian", "os_like": "", "systemd": True, "python": (3, 13), "free_mb": 900,
        "skew_s": 0.1, "lock": ""}
LIBYAML = ("python3 -c 'import sys; sys.path.insert(0, \"/opt/fleet/current/site\"); "
           "import yaml, markupsafe._speedups; print(*sys.version_info[:2], "
           "yaml.__with_libyaml__)'")


def test_plan_gives_each_node_its_release() -> None:
    registry = load_registry(EXAMPLE_REGISTRY)
    plan = plan_nodes(registry, 3, 0, releases={"": "trixie", "bezalel": "bookworm"})
    assert [(n.name, n.release) for n in plan] == [
        ("ezra-primary", "trixie"), ("bezalel", "bookworm"), ("allegro", "trixie")]
    assert {n.release for n in plan_nodes(registry, 2, 0)} == {"bookworm"}


@pytest.mark.parametrize(("releases", "message"), [
    ({"": "bullseye"}, "'bullseye' is not a Debian release the lab boots (bookworm, trixie)"),
    ({"nobody": "trixie"}, "--release nobody=trixie: the lab has no node 'nobody' (nodes: "
                           "ezra-primary, bezalel)"),
])
def test_plan_refuses_unknown_releases_and_nodes(releases: dict[str, str], message: str) -> None:
    with pytest.raises(LabError) as caught:
        plan_nodes(load_registry(EXAMPLE_REGISTRY), 2, 0, releases=releases)
    assert str(caught.value) == message


@pytest.mark.parametrize(("python", "found"), [
    ((3, 13), []), ((3, 12), []), ((3, 11), []),
    ((3, 14), ["python3 is 3.14: the release carries compiled modules for Python 3.11, 3.12, "
               "3.13 only (Debian 12 or 13, Ubuntu 24.04)"]),
    ((3, 10), ["python3 is 3.10, needs >= 3.11"]),
])
def test_preflight_names_an_unsupported_python(python: tuple[int, int],
                                               found: list[str]) -> None:
    assert preflight.problems({**GOOD, "python": python}, "me:1:r") == (found, "")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A clean clone wired to a lab of its own: ezra-primary on bookworm, bezalel on trixie."""
    skip_unless_root()
    claimed = claim_lab("mixed")
    try:
        lab.down(claimed.lab)
        registry = lab.up(load_registry(EXAMPLE_REGISTRY), nodes=2, lab=claimed.lab,
                          releases={name: suite for name, (suite, _) in RELEASES.items()})
        yield make_fleet(registry, tmp_path_factory.mktemp("mixed"))
    finally:
        lab.down(claimed.lab)
        claimed.release()


@pytest.mark.lab
@pytest.mark.slow
def test_debian_12_and_13_deployed_side_by_side(mixed: Fleet) -> None:
    for name, (suite, _) in RELEASES.items():
        assert f"VERSION_CODENAME={suite}" in mixed.ssh(name, "cat /etc/os-release")
    done = mixed.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    record = mixed.record(done.stdout)
    hosts = yaml.safe_load(mixed.registry.read_text())["wizards"]
    for name, (_, python) in RELEASES.items():
        assert record["hosts"][name]["status"] == "ok"
        body = requests.get(f"http://{hosts[name]['host']}:8646/health", timeout=5).json()
        assert (body["status"], body["release"]) == ("ok", record["release"])
        # the node's own interpreter loads the compiled modules built for it
        assert mixed.ssh(name, LIBYAML).split() == [*python.split(), "True"]
    again = mixed.run("deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    entries = mixed.record(again.stdout)["hosts"]
    assert {name: (entry["changed"], entry["restarted"]) for name, entry in entries.items()} \
        == {name: ([], False) for name in RELEASES}
    status = mixed.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
