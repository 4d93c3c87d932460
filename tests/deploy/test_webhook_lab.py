"""The deploy installs the webhook receiver on the orchestrator (``webhook-receiver``) of the
lab, from a clean clone: skipped without its secrets, then installed, answering, left alone by
a no-change redeploy, and deploying the whole lab from the node on a push of PROD.

Run alone with: ``FLEET_TEST_LAB=hook pytest -m lab tests/deploy/test_webhook_lab.py``
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from bus.keys import PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV, keyring_of
from tests.deploy.conftest import SECRETS, Fleet, secret_values
from tests.waiting import wait_for
from tests.webhook.forge import READ_TOKEN, SECRET, signed_push

pytestmark = [pytest.mark.lab, pytest.mark.slow]
ORCH = "ezra-primary"
UNITS = ("fleet-webhook.service", f"fleet-agent-{ORCH}.service")
RUN: dict[str, str] = {}


def receiver_setup(fleet: Fleet, base: Path) -> dict[str, Path]:
    """In ``base``: a lab registry with ``fleet.repo_url`` and every node trusting a new
    deploy key (``deploy_key``), and a secrets file with the receiver's secrets and that key."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-deploy",
                    "-f", str(base / "deploy_key")], check=True)
    public = (base / "deploy_key.pub").read_text().strip()
    data = json.loads(json.dumps(SECRETS))
    data["fleet"].update(FLEET_WEBHOOK_SECRET=SECRET, FLEET_READ_TOKEN=READ_TOKEN)
    data["agents"][ORCH]["FLEET_DEPLOY_SSH_KEY"] = (base / "deploy_key").read_text()
    secrets = base / "secrets.yaml"
    secrets.write_text(yaml.safe_dump(data))
    secrets.chmod(0o600)
    registry = yaml.safe_load(fleet.registry.read_text())
    registry["fleet"]["repo_url"] = "file:///srv/fleet.git"
    for entry in registry["wizards"].values():  # the receiver's deploys log in with its key
        entry["authorized_keys"] = [public]
    edited = base / "registry.yaml"
    shutil.copytree(fleet.registry.parent / "souls", base / "souls")  # souls: inside its folder
    edited.write_text(yaml.safe_dump(registry, sort_keys=False))
    return {"secrets": secrets, "registry": edited, "deploy_key": base / "deploy_key"}


@pytest.fixture(scope="module")
def setup(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The receiver's registry and secrets (:func:`receiver_setup`)."""
    files = receiver_setup(fleet, tmp_path_factory.mktemp("webhook"))
    RUN["key"] = files["deploy_key"].read_text()
    return files


def url(fleet: Fleet, path: str) -> str:
    host = yaml.safe_load(fleet.registry.read_text())["wizards"][ORCH]["host"]
    return f"http://{host}:9876{path}"


def main_pids(fleet: Fleet) -> str:
    return fleet.ssh(ORCH, f"systemctl show {' '.join(UNITS)} -p MainPID -p ActiveEnterTimestamp")


def test_without_a_webhook_secret_the_receiver_is_skipped(fleet: Fleet,
                                                          setup: dict[str, Path]) -> None:
    done = fleet.run("deploy", registry=setup["registry"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("webhook receiver not installed (the deploy goes on): FLEET_WEBHOOK_SECRET is not "
            "set (nor FLEET_GITLAB_TOKEN)") in done.stdout
    assert fleet.record(done.stdout)["hosts"][ORCH]["status"] == "ok"
    state = fleet.ssh(ORCH, "systemctl show fleet-webhook.service -p LoadState --value")
    assert state.strip() == "not-found"


def test_deploy_installs_and_starts_the_receiver(fleet: Fleet, setup: dict[str, Path]) -> None:
    done = fleet.run("deploy", registry=setup["registry"],
                     extra_env={"FLEET_SECRETS": str(setup["secrets"])})
    assert done.returncode == 0, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"][ORCH]
    assert entry["status"] == "ok" and entry["restarted"] is False
    assert any("fleet-webhook.service" in name for name in entry["changed"])
    assert fleet.ssh(ORCH, f"systemctl is-active {UNITS[0]}; systemctl is-enabled {UNITS[0]}"
                     ).split() == ["active", "enabled"]
    wait_for(lambda: "0.0.0.0:9876" in fleet.ssh(ORCH, "ss -ltnH 'sport = :9876'"), 30,
             lambda: "gunicorn to bind :9876 (the unit is active before): " + fleet.ssh(
                 ORCH, f"systemctl status --no-pager {UNITS[0]}; journalctl --no-pager -n 60 "
                       f"-u {UNITS[0]}"), every=0.5)
    files = "/etc/fleet/webhook/webhook.env /etc/fleet/webhook/secrets.yaml " \
            "/etc/fleet/webhook/deploy_key"
    assert fleet.ssh(ORCH, f"stat -c '%a %U' {files}").splitlines() == ["600 fleet-webhook"] * 3
    assert fleet.ssh(ORCH, "cat /etc/fleet/webhook/deploy_key") == RUN["key"]
    copy = yaml.safe_load(fleet.ssh(ORCH, "cat /etc/fleet/webhook/secrets.yaml"))
    operator = SECRETS["identities"]["operator"][PRIVATE_KEY_ENV]
    assert copy["identities"]["operator"] == {  # the public half only: nothing signs as it
        PUBLIC_KEYS_ENV: ",".join(f"{ident}={key}" for ident, key in
                                  keyring_of([("operator", operator)]).items())}
    assert {name: env[PRIVATE_KEY_ENV] for name, env in copy["agents"].items()} == {
        name: env[PRIVATE_KEY_ENV] for name, env in SECRETS["agents"].items()}  # their envs
    assert SECRET not in fleet.ssh(ORCH, f"cat /etc/fleet/{ORCH}/env")

    health = requests.get(url(fleet, "/healthz"), timeout=10,
                          headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    assert requests.get(url(fleet, "/healthz"), timeout=10).status_code == 401
    body, headers = signed_push("gitea", "refs/tags/v1.0", "ab" * 20)
    answer = requests.post(url(fleet, "/hooks/gitea"), data=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "ignored"


def test_receiver_unit_rates_ok_in_systemd_analyze_security(fleet: Fleet) -> None:
    report = fleet.ssh(ORCH, f"systemd-analyze security --no-pager {UNITS[0]}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", report)
    assert found, report
    assert float(found.group(1)) <= 2.5 and found.group(2) == "OK", report
    limits = fleet.ssh(ORCH, f"systemctl show -p MemoryMax -p TasksMax {UNITS[0]}")
    assert limits.split() == ["MemoryMax=2147483648", "TasksMax=1024"]


def test_no_change_redeploy_restarts_neither_receiver_nor_agent(
        fleet: Fleet, setup: dict[str, Path]) -> None:
    before = main_pids(fleet)
    done = fleet.run("deploy", registry=setup["registry"],
                     extra_env={"FLEET_SECRETS": str(setup["secrets"])})
    assert done.returncode == 0, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"][ORCH]
    assert (entry["status"], entry["changed"], entry["restarted"]) == ("ok", [], False)
    assert main_pids(fleet) == before


def test_no_receiver_secret_in_any_output_or_record(fleet: Fleet) -> None:
    records = [path.read_text() for path in fleet.records.glob("*.json")]
    key_line = RUN["key"].splitlines()[1]
    for value in [*secret_values(), SECRET, READ_TOKEN, key_line]:
        assert not [text for text in fleet.transcript if value in text]
        assert not [text for text in records if value in text]


def test_a_push_of_the_deployed_commit_is_up_to_date_on_the_node(
        fleet: Fleet, setup: dict[str, Path],
        unit_state: Callable[[], dict[str, str]]) -> None:
    """The receiver on the node fetches, resolves PROD, and asks every agent's /health
    which release it runs: the commit the earlier deploys installed runs everywhere, so the
    run is ``up-to-date`` and nothing is deployed or restarted. The lab's registry copy on the
    node (its key, known hosts, souls beside it) comes in a drop-in; in production the
    checkout's ``registry.yaml`` is the registry."""
    sha = subprocess.run(["git", "-C", str(fleet.clone), "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    serve_repo_on_node(fleet, setup, sha)
    before = main_pids(fleet), unit_state()

    body, headers = signed_push("gitea", "refs/tags/PROD", sha)
    answer = deliver(fleet, body, headers)
    run = wait_run(fleet, int(answer["run_id"]))
    assert run["status"] == "up-to-date", f"{run['summary']}\n{run['log'][-4000:]}"
    assert (run["commit_sha"], run["release"]) == (sha, sha[:12])
    assert sorted(item["agent"] for item in run["health"]) == sorted(SECRETS["agents"])
    assert all(item["healthy"] and item["release"] == sha[:12] for item in run["health"])
    for value in [SECRET, READ_TOKEN, *secret_values()]:
        assert value not in run["log"]
    assert (main_pids(fleet), unit_state()) == before  # nothing deployed: no restart
    RUN["sha"] = sha


def serve_repo_on_node(fleet: Fleet, setup: dict[str, Path], sha: str) -> None:
    """The receiver's fleet repo on its node: a bare clone of the fleet's clone with PROD at
    ``sha`` in /srv/fleet.git; the lab's registry copy (the deploy key, known hosts, souls
    beside it) in a drop-in, then the receiver restarted and answering."""
    bare = setup["registry"].parent / "fleet.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet.clone), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "tag", "-f", "PROD", sha], check=True,
                   capture_output=True)
    config = fleet.registry.parent / "ssh_config"
    subprocess.run(f"tar -C {bare.parent} -cf - fleet.git | ssh -F {config} {ORCH} "
                   "'tar -C /srv -xf - && chown -R fleet-webhook: /srv/fleet.git'",
                   shell=True, check=True)
    registry = yaml.safe_load(setup["registry"].read_text())
    registry["fleet"].update(ssh_key="/etc/fleet/webhook/deploy_key",
                             known_hosts="/etc/fleet/webhook/known_hosts")
    for name, entry in registry["wizards"].items():
        entry["soul"] = f"souls/{name}.md"  # beside the registry copy, like the checkout's
    node_files = {"lab-registry.yaml": yaml.safe_dump(registry, sort_keys=False),
                  "known_hosts": (fleet.registry.parent / "known_hosts").read_text()}
    for name in registry["wizards"]:
        node_files[f"souls/{name}.md"] = (fleet.clone / "souls" / f"{name}.md").read_text()
    fleet.ssh(ORCH, "mkdir -p /etc/fleet/webhook/souls")
    for name, text in node_files.items():
        subprocess.run(["ssh", "-F", str(config), ORCH,
                        f"cat > /etc/fleet/webhook/{name} && chown fleet-webhook: "
                        f"/etc/fleet/webhook/{name}"], input=text, text=True, check=True)
    fleet.ssh(ORCH, "mkdir -p /etc/systemd/system/fleet-webhook.service.d && printf "
              "'[Service]\\nEnvironment=FLEET_REGISTRY=/etc/fleet/webhook/lab-registry.yaml\\n"
              "Environment=FLEET_HEALTH_CHECK=http\\n' > "
              "/etc/systemd/system/fleet-webhook.service.d/lab.conf && "
              "systemctl daemon-reload && systemctl restart fleet-webhook.service")
    wait_answering(fleet)


def wait_check(fleet: Fleet, after: int, status: str, timeout: float = 240) -> dict[str, Any]:
    """The first scheduled drift check after check ``after`` whose status is ``status``."""
    seen: list[dict[str, Any]] = []

    def found() -> dict[str, Any] | None:
        seen[:] = requests.get(url(fleet, "/drift-checks"), timeout=10,
                               headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()["checks"]
        matching = [check for check in seen if check["id"] > after and check["status"] == status]
        return matching[-1] if matching else None

    check: dict[str, Any] = wait_for(found, timeout, lambda: f"a drift check {status!r} after "
                                                            f"check {after}: {seen[:3]}", every=1)
    return check


def alerts(fleet: Fleet) -> list[dict[str, Any]]:
    """The alerts in the orchestrator's inbox (read with the operator's key)."""
    from bus.client import BusClient
    from bus.keys import PRIVATE_KEY_ENV, signing_key
    from fleet.core.registry import load_registry

    operator = signing_key("operator", SECRETS["identities"]["operator"][PRIVATE_KEY_ENV])
    with BusClient.for_agent(load_registry(fleet.registry), ORCH, operator) as client:
        messages: list[dict[str, Any]] = client.messages(type="alert")["messages"]
    return [message for message in messages if message["payload"].get("kind") == "drift"]


def alert(fleet: Fleet, state: str) -> dict[str, Any] | None:
    """The first drift alert in ``state`` in the orchestrator's inbox, or None."""
    return next((a for a in alerts(fleet) if a["payload"]["state"] == state), None)


def test_scheduled_drift_checks_alert_the_orchestrator(fleet: Fleet,
                                                       setup: dict[str, Path]) -> None:
    """With checks every few seconds, a soul edited on a worker is found by the receiver's
    check, which alerts the orchestrator over the bus; after a deploy the next check finds
    the fleet clean and says so."""
    fleet.ssh(ORCH, "printf '[Service]\\nEnvironment=FLEET_DRIFT_INTERVAL=3\\n' > "
              "/etc/systemd/system/fleet-webhook.service.d/drift.conf && "
              "systemctl daemon-reload && systemctl restart fleet-webhook.service")
    wait_answering(fleet)
    try:
        first = wait_check(fleet, 0, "ok")
        fleet.ssh("bezalel", "echo 'drifted by hand' >> /etc/fleet/bezalel/soul.md")
        drifted = wait_check(fleet, first["id"], "drift")
        assert (drifted["drifted"], drifted["alert"], drifted["alert_status"]) == (
            ["bezalel"], "appeared", "sent")
        host = next(entry for entry in drifted["hosts"] if entry["agent"] == "bezalel")
        assert host["files"] == ["/etc/fleet/bezalel/soul.md"]
        appeared = wait_for(lambda: alert(fleet, "appeared"), 60,
                            "the alert to reach the orchestrator", every=1)
        assert (appeared["from"], appeared["payload"]["hosts"]) == (ORCH, ["bezalel"])

        done = fleet.run("deploy", registry=setup["registry"],
                         extra_env={"FLEET_SECRETS": str(setup["secrets"])})
        assert done.returncode == 0, done.stdout + done.stderr
        cleared = wait_check(fleet, drifted["id"], "ok")
        assert (cleared["drifted"], cleared["alert"], cleared["alert_status"]) == (
            [], "cleared", "sent")
        wait_for(lambda: alert(fleet, "cleared"), 60, "the all-clear to reach the orchestrator",
                 every=1)
    finally:
        fleet.ssh(ORCH, "rm -f /etc/systemd/system/fleet-webhook.service.d/drift.conf && "
                  "systemctl daemon-reload && systemctl restart fleet-webhook.service")
        wait_answering(fleet)


def test_self_heal_deploys_what_a_scheduled_check_found_drifted(fleet: Fleet) -> None:
    """With ``FLEET_DRIFT_HEAL=1``, a soul edited on a worker is found by the receiver's check,
    which queues a deploy of the tag; that run deploys (though every agent runs the tag's
    release already), the soul is the repository's again, and the next check is clean."""
    soul = "/etc/fleet/bezalel/soul.md"
    fleet.ssh(ORCH, "printf '[Service]\\nEnvironment=FLEET_DRIFT_INTERVAL=3\\n"
              "Environment=FLEET_DRIFT_HEAL=1\\n' > "
              "/etc/systemd/system/fleet-webhook.service.d/drift.conf && "
              "systemctl daemon-reload && systemctl restart fleet-webhook.service")
    wait_answering(fleet)
    try:
        checks = requests.get(url(fleet, "/drift-checks"), timeout=10,
                              headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()["checks"]
        first = wait_check(fleet, max((check["id"] for check in checks), default=0), "ok")
        deployed = fleet.ssh("bezalel", f"sha256sum {soul}")
        fleet.ssh("bezalel", f"echo 'drifted by hand' >> {soul}")
        drifted = wait_check(fleet, first["id"], "drift")
        assert drifted["drifted"] == ["bezalel"] and drifted["heal_run_id"], drifted
        run = wait_run(fleet, drifted["heal_run_id"])
        assert (run["status"], run["forge"], run["pusher"]) == ("ok", "drift", "drift check"), \
            run["summary"]
        assert fleet.ssh("bezalel", f"sha256sum {soul}") == deployed
        clean = wait_check(fleet, drifted["id"], "ok")
        assert (clean["drifted"], clean["heal_run_id"]) == ([], None)
    finally:
        fleet.ssh(ORCH, "rm -f /etc/systemd/system/fleet-webhook.service.d/drift.conf && "
                  "systemctl daemon-reload && systemctl restart fleet-webhook.service")
        wait_answering(fleet)


def test_a_push_that_changes_the_receiver_restarts_it_after_its_run(
        fleet: Fleet, setup: dict[str, Path]) -> None:
    """A new sha deploys from the node (``fleet deploy`` with the deploy key and the seeded
    build cache, no package index): canary first, then the workers. It is a new release for
    the receiver too: it finishes and records the run, then restarts on the new release (the
    restart waits for the deploy lock)."""
    bare = setup["registry"].parent / "fleet.git"
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "move PROD"], check=True)
    subprocess.run([*git, "push", "-q", "--force", str(bare), "HEAD:refs/heads/main",
                    "HEAD:refs/tags/PROD"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    config = fleet.registry.parent / "ssh_config"
    subprocess.run(f"tar -C {bare.parent} -cf - fleet.git | ssh -F {config} {ORCH} "
                   "'rm -rf /srv/fleet.git && tar -C /srv -xf - && "
                   "chown -R fleet-webhook: /srv/fleet.git'", shell=True, check=True)
    before = main_pids(fleet)
    body, headers = signed_push("gitea", "refs/tags/PROD", sha, before=RUN["sha"])
    run = wait_run(fleet, int(deliver(fleet, body, headers)["run_id"]))
    assert run["status"] == "ok", f"{run['summary']}\n{run['log'][-4000:]}"
    assert (run["commit_sha"], run["release"]) == (sha, sha[:12])
    assert [stage["stage"] for stage in run["stages"]] == ["canary", "workers"]
    assert sorted(run["hosts"]) == sorted(SECRETS["agents"])
    assert all(item["healthy"] for item in run["health"])
    host = yaml.safe_load(fleet.registry.read_text())["wizards"]
    for name, entry in host.items():
        health = requests.get(f"http://{entry['host']}:8646/health", timeout=5).json()
        assert (name, health["release"]) == (name, sha[:12])
    wait_for(lambda: main_pids(fleet).split("\n\n")[0] != before.split("\n\n")[0], 60,
             "the receiver to restart after its run", every=1)
    wait_answering(fleet)
    unit = fleet.ssh(ORCH, "systemctl show fleet-webhook.service -p Environment --value")
    assert f"/opt/fleet/releases/{sha[:12]}/site" in unit
    health = requests.get(url(fleet, "/healthz"), timeout=10,
                          headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()
    assert health["last_run"]["status"] == "ok"


def wait_answering(fleet: Fleet, timeout: float = 30) -> None:
    """Wait until the (re)started receiver answers."""

    def answers() -> bool:
        try:
            requests.get(url(fleet, "/openapi.json"), timeout=5).close()
            return True
        except requests.ConnectionError:
            return False

    wait_for(answers, timeout, "the receiver to answer", every=0.2)


def deliver(fleet: Fleet, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """POST a push to the receiver on the orchestrator; its 202 answer."""
    answer = requests.post(url(fleet, "/hooks/gitea"), data=body, headers=headers, timeout=10)
    assert answer.status_code == 202, answer.text
    result: dict[str, Any] = answer.json()
    assert result["status"] == "queued", result
    return result


def wait_run(fleet: Fleet, run_id: int, timeout: float = 600) -> dict[str, Any]:
    """The run once it is neither queued nor running (the receiver may be restarting)."""

    def finished() -> dict[str, Any] | None:
        try:
            run: dict[str, Any] = requests.get(
                url(fleet, f"/runs/{run_id}"), timeout=10,
                headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()
        except requests.ConnectionError:
            return None
        return run if run["status"] not in ("queued", "running") else None

    done: dict[str, Any] = wait_for(finished, timeout, f"run {run_id} to finish", every=1)
    return done
