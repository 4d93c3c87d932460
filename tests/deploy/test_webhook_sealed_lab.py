"""The webhook receiver with the fleet's secrets sealed in the repository (age): its deploy makes
the receiver's age identity on its node; an operator seals the secrets to their own and the
receiver's recipients, rotates a key with ``fleet secrets edit``, commits and moves PROD: the
receiver deploys the new key; a bad key in such a change fails verify and is rolled back.

The worker thinks with a stand-in provider on the lab's bridge that checks the key (OpenAI's
wire format): verify's live model round trip is what a wrong key fails.

Run alone with:
``FLEET_TEST_LAB=seal pytest -m "lab or slow" -n 0 tests/deploy/test_webhook_sealed_lab.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.control.secrets import load_secrets
from fleet.control.status import OK, probe_health
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet
from tests.deploy.test_webhook_lab import (
    ORCH,
    deliver,
    receiver_setup,
    serve_repo_on_node,
    wait_answering,
    wait_run,
)
from tests.runtime.conftest import MockProvider
from tests.waiting import wait_for
from tests.webhook.forge import READ_TOKEN, SECRET, signed_push

pytestmark = [pytest.mark.lab, pytest.mark.slow]
WORKER = "bezalel"
OLD_KEY = SECRETS["fleet"]["OPENROUTER_API_KEY"]
NEW_KEY = "sk-or-rotated-SEALED-5e6f7a8b"
BAD_KEY = "sk-or-bad-SEALED-0000dead"
IDENTITY = "/etc/fleet/webhook/age-identity.txt"
RECIPIENT = "/etc/fleet/webhook/age-recipient.txt"
EDITOR = """\
import json, os, sys, yaml
path = sys.argv[1]
data = yaml.safe_load(open(path, encoding="utf-8"))
change = json.loads(os.environ["ROTATE"])
data["fleet"].update(change.get("fleet", {}))
for agent, env in change.get("agents", {}).items():
    data["agents"].setdefault(agent, {}).update(env)
open(path, "w", encoding="utf-8").write(yaml.safe_dump(data))
"""
RUN: dict[str, Any] = {}


@pytest.fixture(scope="module")
def provider(fleet: Fleet) -> Iterator[MockProvider]:
    """The worker's model provider on the lab's bridge: it accepts the fleet's key and the
    rotated one (a provider keeps the old key valid while it is rotated), no other. Afterwards
    the worker is deployed with the lab's own registry again (no runtime, no provider)."""
    stand_in = MockProvider(host=fleet.controller())
    stand_in.key, stand_in.keys = OLD_KEY, {NEW_KEY}
    try:
        yield stand_in
    finally:
        stand_in.close()
        back = fleet.run("deploy", "--limit", WORKER)
        assert back.returncode == 0, back.stdout + back.stderr


@pytest.fixture(scope="module")
def setup(fleet: Fleet, provider: MockProvider,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The receiver's registry (:func:`receiver_setup`; the worker thinks with ``provider``,
    keyed by the secret ``OPENROUTER_API_KEY``) and plaintext secrets, the operator's age
    identity path and the editor script."""
    base = tmp_path_factory.mktemp("sealed")
    files = receiver_setup(fleet, base)
    registry = yaml.safe_load(files["registry"].read_text())
    registry["wizards"][WORKER]["provider"] = {"name": "stand-in", "base_url": provider.url,
                                               "api_key": "OPENROUTER_API_KEY"}
    files["registry"].write_text(yaml.safe_dump(registry, sort_keys=False))
    (base / "editor.py").write_text(EDITOR)
    return {**files, "operator": base / "operator-age.txt", "editor": base / "editor.py"}


def git(fleet: Fleet, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(fleet.clone), "-c", "user.name=operator", "-c",
                           "user.email=operator@localhost", *args], check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def secrets_cli(fleet: Fleet, setup: dict[str, Path], *args: str,
                **env: str) -> subprocess.CompletedProcess[str]:
    """``fleet --registry <clone>/registry.yaml secrets ARGS`` as the operator."""
    done = fleet.run("secrets", *args, registry=fleet.clone / "registry.yaml",
                     extra_env={"FLEET_AGE_IDENTITY": str(setup["operator"]), "FLEET_SECRETS": "",
                                "VISUAL": "", **env})
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def publish(fleet: Fleet, setup: dict[str, Path], message: str) -> dict[str, Any]:
    """Commit the sealed file, move PROD to it in the receiver's repository on the node, and
    push it to the receiver (signed, as the forge would); the run once it finished."""
    git(fleet, "add", "registry.yaml", "secrets.yaml.age")
    git(fleet, "commit", "-q", "-m", message)
    sha = git(fleet, "rev-parse", "HEAD")
    bare = setup["registry"].parent / "fleet.git"
    git(fleet, "push", "-q", "--force", str(bare), "HEAD:refs/heads/main", "HEAD:refs/tags/PROD")
    config = fleet.registry.parent / "ssh_config"
    subprocess.run(f"tar -C {bare.parent} -cf - fleet.git | ssh -F {config} {ORCH} "
                   "'rm -rf /srv/fleet.git && tar -C /srv -xf - && "
                   "chown -R fleet-webhook: /srv/fleet.git'", shell=True, check=True)
    wait_answering(fleet, 60)
    body, headers = signed_push("gitea", "refs/tags/PROD", sha, before=RUN["sha"])
    run = wait_run(fleet, int(deliver(fleet, body, headers)["run_id"]))
    assert run["commit_sha"] == sha, run
    RUN["sha"] = sha
    try:
        wait_for(lambda: f"/opt/fleet/releases/{sha[:12]}/site" in fleet.ssh(
            ORCH, "systemctl show fleet-webhook.service -p Environment --value"), 120,
            "the receiver to restart on the new release after its run", every=1)
    except AssertionError as exc:  # the run's own account says why
        raise AssertionError(f"{exc}: {run['status']}: {run.get('summary')}\n"
                             f"{str(run.get('log', ''))[-3000:]}") from None
    wait_answering(fleet, 60)
    for value in (OLD_KEY, NEW_KEY, BAD_KEY, SECRET, READ_TOKEN):
        assert value not in run["log"], f"{value[:8]}... in the run log"
    return run


def agent_env(fleet: Fleet, agent: str) -> str:
    return fleet.ssh(agent, f"cat /etc/fleet/{agent}/env")


def test_the_deploy_makes_the_receivers_identity_on_its_node(fleet: Fleet,
                                                            setup: dict[str, Path]) -> None:
    """A deploy with the receiver (plaintext secrets still) makes its age identity on the node:
    0600, its user's, made there (no private key in any output on the controller); the
    operator reads its recipient with ``fleet secrets init --receiver``."""
    fleet.ssh(ORCH, f"rm -f {IDENTITY} {RECIPIENT}")  # an earlier module's receiver made one
    done = fleet.run("deploy", registry=setup["registry"],
                     extra_env={"FLEET_SECRETS": str(setup["secrets"])})
    assert done.returncode == 0, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"][ORCH]
    assert any("Age identity of the receiver" in name for name in entry["changed"]), entry
    assert fleet.ssh(ORCH, f"stat -c '%a %U' {IDENTITY} {RECIPIENT}").splitlines() == [
        "600 fleet-webhook", "644 root"]
    recipient = fleet.ssh(ORCH, f"cat {RECIPIENT}").strip()
    assert fleet.ssh(ORCH, f"head -1 {IDENTITY}").strip() == f"# public key: {recipient}"
    assert fleet.ssh(ORCH, f"grep -c '^AGE-SECRET-KEY-1' {IDENTITY}").strip() == "1"
    shown = fleet.run("secrets", "init", "--receiver", registry=setup["registry"])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout == f"{recipient}\n"
    assert not [text for text in fleet.transcript if "AGE-SECRET-KEY" in text]
    RUN["receiver"] = recipient

    again = fleet.run("deploy", "--limit", ORCH, registry=setup["registry"],
                      extra_env={"FLEET_SECRETS": str(setup["secrets"])})
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.record(again.stdout)["hosts"][ORCH]["changed"] == []  # kept: not made again
    assert fleet.ssh(ORCH, f"cat {RECIPIENT}").strip() == recipient


def test_sealed_secrets_replace_the_receivers_plaintext_copy(fleet: Fleet,
                                                             setup: dict[str, Path]) -> None:
    """The operator seals the secrets (the operator's bus key as its public half only) in the
    repository to their own and the receiver's recipients and deploys: ``webhook.env`` names the
    receiver's identity, the plaintext copy is gone from the node."""
    operator = secrets_cli(fleet, setup, "init", "--identity", str(setup["operator"]))
    registry = fleet.clone / "registry.yaml"
    text = registry.read_text()
    assert "\nfleet:\n" in text
    registry.write_text(text.replace(
        "\nfleet:\n", "\nfleet:\n  secrets:\n    file: secrets.yaml.age\n"
                      f"    recipients: [{operator.stdout.strip()}]\n", 1))
    plain = setup["secrets"].parent / "receiver-secrets.yaml"
    plain.touch(mode=0o600)
    plain.write_text(load_secrets(setup["secrets"]).receiver_copy())
    secrets_cli(fleet, setup, "encrypt", str(plain))
    plain.unlink()
    secrets_cli(fleet, setup, "recipients", "add", RUN["receiver"])
    git(fleet, "add", "registry.yaml", "secrets.yaml.age")
    git(fleet, "commit", "-q", "-m", "secrets sealed in the repository")
    RUN["sha"] = git(fleet, "rev-parse", "HEAD")

    lab = yaml.safe_load(setup["registry"].read_text())
    lab["fleet"]["secrets"] = yaml.safe_load(registry.read_text())["fleet"]["secrets"]
    setup["registry"].write_text(yaml.safe_dump(lab, sort_keys=False))
    done = fleet.run("deploy", registry=setup["registry"], extra_env={
        "FLEET_SECRETS": str(fleet.clone / "secrets.yaml.age"),
        "FLEET_AGE_IDENTITY": str(setup["operator"])})
    assert done.returncode == 0, done.stdout + done.stderr
    env = fleet.ssh(ORCH, "cat /etc/fleet/webhook/webhook.env")
    assert f'FLEET_AGE_IDENTITY="{IDENTITY}"' in env and "FLEET_SECRETS" not in env
    assert fleet.ssh(ORCH, "ls /etc/fleet/webhook").split().count("secrets.yaml") == 0
    serve_repo_on_node(fleet, setup, RUN["sha"])  # the lab registry drop-in names the file too


def test_a_tag_push_rotates_a_key_through_the_sealed_file(fleet: Fleet,
                                                          setup: dict[str, Path]) -> None:
    """``fleet secrets edit`` rotates the provider key, the operator commits and moves PROD:
    the receiver opens the commit's sealed file and deploys the new key to every agent."""
    assert f'OPENROUTER_API_KEY="{OLD_KEY}"' in agent_env(fleet, WORKER)
    secrets_cli(fleet, setup, "edit", EDITOR=f"{sys.executable} {setup['editor']}",
                ROTATE=json.dumps({"fleet": {"OPENROUTER_API_KEY": NEW_KEY}}))
    run = publish(fleet, setup, "rotate the provider key")
    assert run["status"] == "ok", f"{run['summary']}\n{run['log'][-4000:]}"
    for agent in SECRETS["agents"]:
        assert f'OPENROUTER_API_KEY="{NEW_KEY}"' in agent_env(fleet, agent), agent


def test_a_bad_key_in_a_sealed_change_fails_verify_and_rolls_back(
        fleet: Fleet, setup: dict[str, Path], provider: MockProvider) -> None:
    """A change giving the worker a key its provider refuses (and nothing else): verify's live
    model round trip fails there (401), the rollback restores the environment it replaced, and
    the worker thinks with the rotated key again."""
    secrets_cli(fleet, setup, "edit", EDITOR=f"{sys.executable} {setup['editor']}",
                ROTATE=json.dumps({"agents": {WORKER: {"OPENROUTER_API_KEY": BAD_KEY}}}))
    run = publish(fleet, setup, "a bad key for one worker")
    assert run["status"] != "ok", run["summary"]
    assert run["hosts"][WORKER]["status"] == "rolled_back", run["hosts"]
    env = agent_env(fleet, WORKER)
    assert f'OPENROUTER_API_KEY="{NEW_KEY}"' in env and BAD_KEY not in env
    record = json.loads(fleet.ssh(ORCH, f"cat {run['record_path']}"))
    verify = record["hosts"][WORKER]["verify"]
    assert "401" in " ".join(verify["problems"]), verify
    assert verify["rollback"]["env_restored"] is True, verify
    agent = load_registry(setup["registry"]).get(WORKER)
    verdict, body = probe_health(agent, 15.0, think=True)
    assert verdict == OK, body  # the rotated key, put back, works
    assert body["runtime"]["live_round_trip"]["ok"] is True, body
