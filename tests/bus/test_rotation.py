"""Key rotation without downtime (issue 9): ``fleet keys rotate`` adds a key beside the old,
the deploy gives every gateway both public keys and the agent both private keys (it keeps
signing with the old), ``fleet keys retire`` drops the old one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from flask.testing import FlaskClient

from bus.keys import PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV, new_private_key, private_keys
from fleet.cli import main
from fleet.control.secrets import load_secrets
from fleet.node.gateway import create_app
from tests.bus.conftest import dumps, message, signed_headers

AGENTS = ("ezra", "bezalel", "allegro", "ghost")


@pytest.fixture
def secrets_file(tmp_path: Path) -> Path:
    """A secrets file of the test fleet (as ``fleet init`` writes one), mode 0600."""
    path = tmp_path / "secrets.yaml"
    data = {"agents": {name: {PRIVATE_KEY_ENV: new_private_key()} for name in AGENTS},
            "identities": {"operator": {PRIVATE_KEY_ENV: new_private_key()}}}
    path.touch(mode=0o600)
    path.write_text("# my fleet's secrets\n" + yaml.safe_dump(data), encoding="utf-8")
    return path


def keys(cli_args: list[str], secrets: Path) -> str:
    done = CliRunner().invoke(main, ["keys", *cli_args, "--secrets", str(secrets)])
    assert done.exit_code == 0, done.output
    return done.output


def gateway(tmp_path: Path, registry_path: Path, secrets: Path, name: str) -> FlaskClient:
    """``name``'s gateway as the deploy would configure it from ``secrets`` (its env)."""
    env = load_secrets(secrets).for_agent(name)
    app = create_app({"AGENT": name, "REGISTRY": str(registry_path),
                      "STATE_DIR": str(tmp_path / name / str(len(list(tmp_path.iterdir())))),
                      "BUS_PUBLIC_KEYS": env[PUBLIC_KEYS_ENV],
                      "BUS_PRIVATE_KEY": env[PRIVATE_KEY_ENV],
                      "BUS_WORKER": False, "TESTING": True})
    return app.test_client()


def post(client: FlaskClient, key: str, message_id: str) -> int:
    body = dumps(message(id=message_id))
    code: int = client.post("/message", data=body,
                            headers=signed_headers("ezra", body, key=key)).status_code
    return code


def test_rotate_then_retire(tmp_path: Path, registry_path: Path, secrets_file: Path) -> None:
    old = load_secrets(secrets_file).private_keys()["ezra"]
    old_id = private_keys("ezra", old)[0].keyid
    added = keys(["rotate", "ezra"], secrets_file)
    assert added.startswith("added ezra:") and "it still signs with its old key" in added
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert secrets_file.read_text().startswith("# my fleet's secrets\n")
    both = load_secrets(secrets_file)
    old_text, new = both.private_keys()["ezra"].split(",")
    assert old_text == old
    new_id = private_keys("ezra", new)[0].keyid
    assert added == (f"added {new_id} to ezra's {PRIVATE_KEY_ENV}; it still signs with its old "
                     "key.\nNext: `fleet deploy` (every gateway trusts both keys), then `fleet "
                     "keys retire ezra` and `fleet deploy` again.\n")
    # the deploy: ezra's env holds both of its private keys (it signs with the old one) ...
    ezra_env = both.for_agent("ezra")
    assert ezra_env[PRIVATE_KEY_ENV] == f"{old},{new}"
    assert private_keys("ezra", ezra_env[PRIVATE_KEY_ENV])[0].keyid == old_id
    # ... every agent's keyring both public keys, and no agent another's private key
    bezalel_env = both.for_agent("bezalel")
    assert {old_id, new_id} <= set(bezalel_env[PUBLIC_KEYS_ENV].replace("=", ",").split(","))
    assert old not in bezalel_env.values() and new not in str(bezalel_env)
    assert (f"ezra (agent): signs with {old_id}; also trusted: {new_id}"
            in keys(["list"], secrets_file).splitlines())
    between = gateway(tmp_path, registry_path, secrets_file, "bezalel")
    assert [post(between, old, "m-old"), post(between, new, "m-new")] == [201, 201]

    retired = keys(["retire", "ezra"], secrets_file)
    assert retired.startswith(f"retired {old_id}; run `fleet deploy`")
    after = load_secrets(secrets_file)
    assert after.private_keys()["ezra"] == new
    redeployed = gateway(tmp_path, registry_path, secrets_file, "bezalel")
    refused = redeployed.post("/message", data=dumps(message(id="m-late")),
                              headers=signed_headers("ezra", dumps(message(id="m-late")),
                                                     key=old))
    assert refused.status_code == 401
    assert refused.json["error"] == (f"Signature-Input: keyid {old_id!r} is not trusted by this "
                                     "gateway")
    assert post(redeployed, new, "m-after") == 201


def test_retire_needs_a_newer_key_and_names_must_exist(secrets_file: Path) -> None:
    done = CliRunner().invoke(main, ["keys", "retire", "ezra", "--secrets", str(secrets_file)])
    assert done.exit_code == 1
    assert done.output == ("Error: ezra has 1 bus key(s); retiring needs a newer one beside the "
                           "old\nHint: Run `fleet keys rotate ezra` and deploy first.\n")
    done = CliRunner().invoke(main, ["keys", "rotate", "nobody", "--secrets", str(secrets_file)])
    assert done.exit_code == 1
    assert done.output.startswith("Error: 'nobody' is neither an agent in the secrets file nor "
                                  "an identity")


def test_rotate_creates_a_missing_identity(secrets_file: Path) -> None:
    output = keys(["rotate", "receiver"], secrets_file)
    assert output.startswith("added receiver:")
    assert load_secrets(secrets_file).for_receiver("ezra")[PRIVATE_KEY_ENV] == (
        load_secrets(secrets_file).private_keys()["receiver"])
