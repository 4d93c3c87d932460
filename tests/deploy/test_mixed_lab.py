"""Mixed Debian releases: one release runs on each node's own Python. Unit checks of the lab
plan and of preflight's Python rule; on the lab, a Debian 12 (Python 3.11) and a Debian 13
(Python 3.13) node deployed side by side, both healthy, each loading the compiled modules built
for its own interpreter, and a second deploy changes nothing; then the webhook receiver on the
Debian 13 node (the orchestrator's ``webhook-receiver``) installed, answering, and deploying
the fleet from there on a signed push."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import requests
import yaml

from deploys import preflight
from fleet.core.errors import LabError
from fleet.core.registry import load_registry
from fleet.lab.registry_writer import plan_nodes
from tests.deploy.conftest import Fleet, own_lab
from tests.deploy.test_webhook_lab import (
    ORCH,
    deliver,
    receiver_setup,
    serve_repo_on_node,
    url,
    wait_answering,
    wait_run,
)
from tests.lab_fixtures import EXAMPLE_REGISTRY
from tests.webhook.forge import READ_TOKEN, signed_push

RELEASES = {"ezra-primary": ("trixie", "3 13"), "bezalel": ("bookworm", "3 11")}
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
    releases = {name: suite for name, (suite, _) in RELEASES.items()}
    with own_lab("mixed", tmp_path_factory.mktemp("mixed"), nodes=2, releases=releases) as fleet:
        yield fleet


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


@pytest.mark.lab
@pytest.mark.slow
def test_a_receiver_on_debian_13_deploys_a_signed_push(
        mixed: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert RELEASES[ORCH][0] == "trixie"  # the orchestrator carries the receiver
    files = receiver_setup(mixed, tmp_path_factory.mktemp("receiver-13"))
    done = mixed.run("deploy", registry=files["registry"],
                     extra_env={"FLEET_SECRETS": str(files["secrets"])})
    assert done.returncode == 0, done.stdout + done.stderr
    wait_answering(mixed, timeout=60)
    health = requests.get(url(mixed, "/healthz"), timeout=10,
                          headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert (health.status_code, health.json()["status"]) == (200, "ok"), health.text

    git = ["git", "-C", str(mixed.clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "deploy from Debian 13"],
                   check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    serve_repo_on_node(mixed, files, sha)
    body, headers = signed_push("gitea", "refs/tags/PROD", sha)
    run = wait_run(mixed, int(deliver(mixed, body, headers)["run_id"]))
    assert run["status"] == "ok", f"{run['summary']}\n{run['log'][-4000:]}"
    assert (run["commit_sha"], run["release"]) == (sha, sha[:12])
    assert sorted(run["hosts"]) == sorted(RELEASES)
    hosts = yaml.safe_load(mixed.registry.read_text())["wizards"]
    for name in RELEASES:
        agent = requests.get(f"http://{hosts[name]['host']}:8646/health", timeout=5).json()
        assert (name, agent["status"], agent["release"]) == (name, "ok", sha[:12])
