"""Runs of a fleet repo whose registry names a sealed secrets file: the deploy opens the sealed
file of the commit the tag points to, with the receiver's age identity, and the run log masks
every value decrypted from it."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from pyrage import x25519

from fleet.control.sealed import recipient_of, write_sealed
from fleet.webhook.config import Settings
from fleet.webhook.dispatcher import drain
from fleet.webhook.runner import checkout_secrets, secret_values, work_env
from tests.webhook.conftest import FleetRepo, git, read_records
from tests.webhook.test_runner import push_tag, show

OLD_KEY = "sk-or-old-sealed-value-1111"
NEW_KEY = "sk-or-new-sealed-value-2222"


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    """The receiver's age identity file (0600, as its deploy writes it)."""
    key = x25519.Identity.generate()
    path = tmp_path / "age-identity.txt"
    path.touch(mode=0o600)
    path.write_text(f"# public key: {recipient_of(key)}\n{key}\n")
    return path


def seal_commit(repo: FleetRepo, identity: Path, api_key: str) -> str:
    """Commit a registry naming ``secrets.yaml.age`` and that file sealed to ``identity``'s
    recipient, holding ``api_key``; its sha."""
    recipient = identity.read_text().splitlines()[0].removeprefix("# public key: ")
    (repo.work / "registry.yaml").write_text(
        "fleet:\n  name: t\n  secrets:\n    file: secrets.yaml.age\n"
        f"    recipients: [{recipient}]\n"
        "wizards:\n  alpha: {host: 10.0.0.1, role: orchestrator, model: m}\n")
    write_sealed(repo.work / "secrets.yaml.age",
                 f"fleet:\n  OPENROUTER_API_KEY: {api_key}\n",
                 [x25519.Recipient.from_str(recipient)])
    git("add", "registry.yaml", "secrets.yaml.age", cwd=repo.work)
    return repo.commit(f"secrets {api_key[-4:]}")


def sealed_settings(settings: Settings, identity: Path) -> Settings:
    """``settings`` as the receiver's deploy writes them with a sealed file: its identity, no
    ``FLEET_SECRETS``; the stand-in prints the API key it opens."""
    env = {key: value for key, value in settings.env.items() if key != "FLEET_SECRETS"}
    return replace(settings, env={**env, "FLEET_AGE_IDENTITY": str(identity),
                                  "STANDIN_SECRET": "OPENROUTER_API_KEY"})


def test_the_tag_deploys_the_sealed_secrets_of_its_commit_and_the_log_masks_them(
        client: FlaskClient, settings: Settings, fleet_repo: FleetRepo, identity: Path,
        record_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PROD at a commit with a rotated key deploys the new key; moved back, the old one: the
    deploy opened the sealed file of the tag's commit each time, and neither value is in the
    run log."""
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    monkeypatch.setenv("FLEET_AGE_IDENTITY", str(identity))
    old = seal_commit(fleet_repo, identity, OLD_KEY)
    new = seal_commit(fleet_repo, identity, NEW_KEY)
    receiver = sealed_settings(settings, identity)
    opened = []
    for sha in (new, old):
        fleet_repo.push_tag("PROD", sha)
        run_id = push_tag(client, sha)
        assert drain(receiver) == [run_id]
        run = show(client, run_id)
        assert run["status"] == "ok", run["summary"]
        assert "stand-in deploy: OPENROUTER_API_KEY=***" in run["log"]
        assert OLD_KEY not in run["log"] and NEW_KEY not in run["log"]
        assert "sealed-value" not in run["log"]
        opened.append(read_records(record_file)[-1]["secret_sha256"])
    assert opened == [hashlib.sha256(key.encode()).hexdigest() for key in (NEW_KEY, OLD_KEY)]
    # between runs (a log left by a killed run, a drift check): the last checkout's values
    assert OLD_KEY in secret_values(receiver) and NEW_KEY not in secret_values(receiver)


def test_the_deploy_env_names_the_checkouts_sealed_file(
        settings: Settings, fleet_repo: FleetRepo, identity: Path, tmp_path: Path) -> None:
    """Whatever ``FLEET_SECRETS`` the receiver has (or a registry drop-in names), the deploy
    opens the sealed file of its checkout; ``secret_values`` decrypts it with the identity."""
    seal_commit(fleet_repo, identity, NEW_KEY)
    work = fleet_repo.work
    assert checkout_secrets(work) == work / "secrets.yaml.age"
    receiver = replace(sealed_settings(settings, identity),
                       env={**sealed_settings(settings, identity).env,
                            "FLEET_SECRETS": "/etc/fleet/webhook/secrets.yaml",
                            "FLEET_REGISTRY": "/etc/fleet/webhook/lab-registry.yaml"})
    env = work_env(receiver, work, tmp_path / "records" / "run.json")
    assert env["FLEET_SECRETS"] == str(work / "secrets.yaml.age")
    assert env["FLEET_AGE_IDENTITY"] == str(identity)
    assert NEW_KEY in secret_values(receiver, env)
    assert NEW_KEY not in secret_values(receiver)  # no checkout: the receiver's own only


def test_a_checkout_without_a_sealed_file_keeps_the_receivers_secrets_file(
        settings: Settings, fleet_repo: FleetRepo, tmp_path: Path) -> None:
    assert checkout_secrets(fleet_repo.work) is None  # no registry.yaml at all
    (fleet_repo.work / "registry.yaml").write_text(
        "wizards:\n  alpha: {host: 10.0.0.1, role: orchestrator, model: m}\n")
    assert checkout_secrets(fleet_repo.work) is None
    receiver = replace(settings, env={**settings.env, "FLEET_SECRETS": "/etc/x/secrets.yaml"})
    env = work_env(receiver, fleet_repo.work, tmp_path / "run.json")
    assert env["FLEET_SECRETS"] == "/etc/x/secrets.yaml"
