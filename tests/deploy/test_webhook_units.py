"""Fast tests of the webhook receiver's part of the deploy: which secrets go where, why it is
skipped, its environment and its unit."""

from __future__ import annotations

import ast
import stat
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bus.keys import format_keyring, keyring_of, new_private_key
from deploys import webhook
from deploys.context import AgentContext
from deploys.facts import empty_snapshot
from deploys.ops import _hide_all
from fleet.control.release import Release, build_receiver_code, build_release
from fleet.control.sealed import load_identities, recipient_of
from fleet.control.secrets import BUS_KEY, Secrets
from fleet.core.registry import Registry, SealedSecrets, load_registry
from fleet.core.release_marker import Broken
from tests.webhook.forge import READ_TOKEN, SECRET

REPO = Path(__file__).resolve().parents[2]
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAkey\n-----END OPENSSH PRIVATE KEY-----\n"
BUS = {name: new_private_key() for name in ("ezra-primary", "bezalel", "receiver")}
FULL = Secrets(fleet={"OPENROUTER_API_KEY": "sk-or-x", "FLEET_WEBHOOK_SECRET": SECRET},
               agents={"ezra-primary": {BUS_KEY: BUS["ezra-primary"],
                                        "FLEET_READ_TOKEN": READ_TOKEN,
                                        "FLEET_DEPLOY_SSH_KEY": KEY},
                       "bezalel": {BUS_KEY: BUS["bezalel"]}},
               identities={"receiver": {BUS_KEY: BUS["receiver"]}})


@pytest.fixture
def registry() -> Registry:
    """The example registry with ``fleet.repo_url`` set."""
    return replace(load_registry(REPO / "registry.yaml"), repo_url="git@forge:ops/fleet.git")


def context(registry: Registry, secrets: Secrets, monkeypatch: pytest.MonkeyPatch,
            name: str = "ezra-primary") -> AgentContext:
    """The context of ``name`` with ``secrets`` as the secrets file and a fixed release."""
    monkeypatch.setattr(AgentContext, "release",
                        property(lambda self: Release(id="abc123", path=Path("/x"))))
    monkeypatch.setattr(webhook, "build_receiver_code",
                        lambda: Release(id="receiver-0123", path=Path("/c.tar.gz")))
    agent = registry.get(name)
    return AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent),
                        secrets=secrets)


def test_receiver_only_secrets_stay_out_of_agent_environments() -> None:
    assert FULL.for_agent("ezra-primary") == {
        "OPENROUTER_API_KEY": "sk-or-x", BUS_KEY: BUS["ezra-primary"],
        "FLEET_BUS_PUBLIC_KEYS": format_keyring(keyring_of(BUS.items()))}
    assert FULL.for_receiver("ezra-primary") == {
        "FLEET_WEBHOOK_SECRET": SECRET, "FLEET_READ_TOKEN": READ_TOKEN,
        "FLEET_DEPLOY_SSH_KEY": KEY, BUS_KEY: BUS["receiver"]}
    assert FULL.for_receiver("bezalel") == {"FLEET_WEBHOOK_SECRET": SECRET,
                                            BUS_KEY: BUS["receiver"]}
    assert KEY in FULL.values()


def test_environment_names_the_key_and_holds_no_private_key(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(registry, FULL, monkeypatch)
    assert webhook.problem(ctx) is None
    assert webhook.receiver_env(ctx) == {
        "FLEET_STATE_DIR": "/var/lib/fleet/webhook",
        "FLEET_REPO_URL": "git@forge:ops/fleet.git",
        "FLEET_SECRETS": "/etc/fleet/webhook/secrets.yaml",
        "PYTHONDONTWRITEBYTECODE": "1",
        "FLEET_WEBHOOK_SECRET": SECRET, "FLEET_READ_TOKEN": READ_TOKEN,
        BUS_KEY: BUS["receiver"]}  # the receiver's own bus key, no agent's
    assert webhook.deploy_key(ctx) == KEY
    assert webhook.ssh_config() == ("Host *\n    IdentityFile /etc/fleet/webhook/deploy_key\n"
                                    "    IdentitiesOnly yes\n")


def test_deploys_run_fleet_deploy_not_a_configured_command(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = Secrets(fleet={"FLEET_WEBHOOK_SECRET": SECRET, "FLEET_READ_TOKEN": READ_TOKEN})
    env = webhook.receiver_env(context(registry, secrets, monkeypatch))
    assert "FLEET_DEPLOY_COMMAND" not in env and "GIT_SSH_COMMAND" not in env


@pytest.mark.parametrize(("secrets", "repo_url", "message"), [
    (Secrets(fleet={"FLEET_READ_TOKEN": READ_TOKEN}), "git@forge:f.git",
     "FLEET_WEBHOOK_SECRET is not set (nor FLEET_GITLAB_TOKEN): the receiver cannot check who "
     "sent a push; add it under fleet: or agents.ezra-primary: in the secrets file "
     "($FLEET_SECRETS is not set)"),
    (Secrets(fleet={"FLEET_WEBHOOK_SECRET": SECRET}), "git@forge:f.git",
     "FLEET_READ_TOKEN is not set: it names the bearer token of the read API (GET /runs, "
     "/healthz); add it under fleet: or agents.ezra-primary: in the secrets file "
     "($FLEET_SECRETS is not set)"),
    (Secrets(fleet={"FLEET_WEBHOOK_SECRET": "short", "FLEET_READ_TOKEN": READ_TOKEN}),
     "git@forge:f.git",
     "FLEET_WEBHOOK_SECRET is too short (5 characters); use at least 16 random characters; "
     "add it under fleet: or agents.ezra-primary: in the secrets file "
     "($FLEET_SECRETS is not set)"),
    (FULL, None, "fleet.repo_url is not set in the registry; set it to the fleet repository "
                 "the receiver deploys from"),
    (FULL, "--upload-pack=touch /tmp/x", "FLEET_REPO_URL '--upload-pack=touch /tmp/x' starts "
     "with '-'; git would read it as an option; fix fleet.repo_url in the registry"),
    (FULL, "git@forge:f.git\nFLEET_DEPLOY_TAG=*", "FLEET_REPO_URL 'git@forge:f.git\\n"
     "FLEET_DEPLOY_TAG=*' contains a control character (newline, tab, ...); fix fleet.repo_url "
     "in the registry"),
    (Secrets(fleet={"FLEET_WEBHOOK_SECRET": SECRET + "\nFLEET_REPO_URL=x",
                    "FLEET_READ_TOKEN": READ_TOKEN}), "git@forge:f.git",
     "FLEET_WEBHOOK_SECRET contains a control character (newline, tab, ...); "
     "/etc/fleet/webhook/webhook.env holds one KEY=value per line"),
])
def test_why_the_receiver_is_skipped(registry: Registry, monkeypatch: pytest.MonkeyPatch,
                                     secrets: Secrets, repo_url: str | None,
                                     message: str) -> None:
    ctx = context(replace(registry, repo_url=repo_url), secrets, monkeypatch)
    assert webhook.problem(ctx) == message
    assert SECRET not in message


def test_unit_runs_the_receiver_code_of_this_release_with_the_deploy_tools(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    unit = webhook.unit_text(context(registry, FULL, monkeypatch), "deploy-tools-0123")
    assert ("Environment=PYTHONPATH=/opt/fleet/releases/abc123/receiver-0123:"
            "/opt/fleet/releases/abc123/site:/opt/fleet/tools/deploy-tools-0123/site\n") in unit
    assert ("ExecStart=/usr/bin/python3 -m fleet webhook serve --host 0.0.0.0 --port 9876 "
            "--workers 2\n") in unit
    assert "KillMode" not in unit  # stopping the unit stops the dispatcher and its deploy
    assert "EnvironmentFile=/etc/fleet/webhook/webhook.env\n" in unit
    assert "User=fleet-webhook\n" in unit
    assert "ReadWritePaths=/var/lib/fleet/webhook /var/lib/fleet/webhook\n" in unit


def test_secret_files_that_are_not_env_files_show_no_content_in_diffs() -> None:
    assert _hide_all("", KEY) == ("", "(secret content not shown)\n")
    old, new = _hide_all(KEY, KEY + "x")
    assert KEY not in old + new and new == "(secret content not shown, changed)\n"


def test_a_release_built_under_umask_0077_is_readable_by_all(tmp_path: Path) -> None:
    """The receiver builds releases with ``UMask=0077``; agents must still read them."""
    (tmp_path / "fleet").mkdir(mode=0o700)
    (tmp_path / "fleet" / "__init__.py").write_text("# fleet\n")
    (tmp_path / "fleet" / "__init__.py").chmod(0o600)
    (tmp_path / "bus").mkdir(mode=0o700)
    release = build_release(root=tmp_path, broken=Broken.NO)
    with tarfile.open(release.path) as tar:
        modes = {info.name: (info.mode, info.uname) for info in tar.getmembers()
                 if info.name.startswith(("site/fleet", "site/bus"))}
    assert modes["site/fleet"] == (0o755, "root")
    assert modes["site/fleet/__init__.py"] == (0o644, "root")


def test_the_receiver_code_is_the_fleet_package_but_the_lab(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """What the receiver runs beyond its node's release (``fleet webhook serve``: the CLI, the
    receiver, the rollout), with the package's core and node parts: ``fleet`` is one package."""
    monkeypatch.setenv("FLEET_CACHE_DIR", str(tmp_path / "cache"))
    code = build_receiver_code(REPO)
    with tarfile.open(code.path) as tar:
        names = set(tar.getnames())
    assert {"fleet/__init__.py", "fleet/__main__.py", "fleet/cli/webhook.py",
            "fleet/webhook/runner.py", "fleet/control/rollout.py", "fleet/dashboard/app.py",
            "fleet/core/registry.py", "fleet/node/nodectl.py"} <= names
    assert not {name for name in names if name.startswith(("fleet/lab", "bus", "site"))}
    assert code.id.startswith("receiver-") and code.path.name == f"{code.id}.tar.gz"


def test_deploy_py_shows_the_receiver_as_its_own_step_before_verify() -> None:
    """The agent's phases know no receiver; deploy.py runs it after the agent's services and
    before verify (which releases the node's deploy lock)."""
    tree = ast.parse((REPO / "deploy.py").read_text(encoding="utf-8"))

    def steps(node: ast.AST) -> list[str]:
        calls = sorted((call for call in ast.walk(node) if isinstance(call, ast.Call)),
                       key=lambda call: call.lineno)
        return [ast.unparse(call.func) for call in calls
                if ast.unparse(call.func).endswith(".run") or ast.unparse(call.func)
                == "changes"]

    changes = next(node for node in tree.body
                   if isinstance(node, ast.FunctionDef) and node.name == "changes")
    phases = steps(changes)
    assert phases[phases.index("services.run"):] == ["services.run", "sandbox.run",
                                                     "webhook.run"]
    planned = steps(ast.Module(body=[node for node in tree.body if node is not changes],
                               type_ignores=[]))
    assert planned[planned.index("changes"):][:3] == ["changes", "verify.run", "audit.run"]
    for phase in ("baseline", "keys", "services"):
        assert "webhook" not in (REPO / "deploys" / f"{phase}.py").read_text(encoding="utf-8")


def test_the_webhook_step_installs_account_settings_then_service(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its operations in order, named under its own phase; the service restarts on a change
    of its environment (the operation writing webhook.env is its trigger)."""
    ctx = context(registry, FULL, monkeypatch)
    calls = planned(ctx, monkeypatch)
    assert [name for name, _ in ctx.changes] == [f"Webhook | {name}" for name in (
        webhook.GIT, webhook.ACCOUNT, webhook.DIRECTORIES, webhook.ENV, webhook.KEY, webhook.SSH,
        webhook.CODE, webhook.TOOLS, webhook.CACHE, webhook.UNIT_FILE, webhook.SERVICE,
        webhook.IDENTITY)]
    assert calls[webhook.CODE]["dest"] == "/opt/fleet/releases/abc123/receiver-0123"
    assert [op.name for op in calls[webhook.SERVICE]["triggers"]] == [webhook.ENV]
    assert calls[webhook.SERVICE]["unit_file"].name == webhook.UNIT_FILE


SEALED = SealedSecrets(file="secrets.yaml.age", recipients=("age1" + "q" * 58,))


def planned(ctx: AgentContext, monkeypatch: pytest.MonkeyPatch,
            on_node: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The webhook step's operations by name (their arguments), on a node holding the files
    ``on_node``."""
    calls: dict[str, dict[str, Any]] = {}

    def operation(**kwargs: Any) -> SimpleNamespace:
        calls[kwargs["name"]] = kwargs
        return SimpleNamespace(name=kwargs["name"])

    for name in ("agent_account", "directories", "secret_file", "managed_file", "tree_unpacked",
                 "release_unpacked", "deps_seeded", "agent_service"):
        monkeypatch.setattr(webhook, name, operation)
    monkeypatch.setattr(webhook, "apt", SimpleNamespace(packages=operation))
    monkeypatch.setattr(webhook, "server", SimpleNamespace(shell=operation))
    node = empty_snapshot()
    node["paths"] = {path: {"user": "fleet-webhook", "group": "fleet-webhook", "mode": "600",
                            "sha256": "0" * 64} for path in on_node}
    monkeypatch.setattr(webhook, "receiver", lambda ctx: webhook.Receiver(problem=None,
                                                                           node=node))
    monkeypatch.setattr(webhook, "build_receiver_code",
                        lambda: Release(id="receiver-0123", path=Path("/r.tar.gz")))
    monkeypatch.setattr(webhook, "build_deploy_tools",
                        lambda: Release(id="deploy-tools-0123", path=Path("/t.tar.gz")))
    monkeypatch.setattr(webhook, "deps_keys", lambda: ("r", "t"))
    ctx.phase_name = "Webhook"  # what the phase decorator sets around pyinfra's deploy
    webhook.run.__wrapped__(ctx)  # type: ignore[attr-defined]
    return calls


def test_with_a_sealed_file_the_receiver_gets_its_identity_and_no_plaintext_copy(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry names a sealed file: ``webhook.env`` names the receiver's age identity and
    no secrets file (its deploys open the sealed file of their checkout), no plaintext copy is
    written, and the one an earlier deploy left is removed."""
    ctx = context(replace(registry, secrets=SEALED), replace(FULL, path=Path("/s.yaml.age")),
                  monkeypatch)
    env = webhook.receiver_env(ctx)
    assert env["FLEET_AGE_IDENTITY"] == "/etc/fleet/webhook/age-identity.txt"
    assert "FLEET_SECRETS" not in env and "FLEET_SECRETS" not in webhook.public_env(ctx)
    assert "FLEET_AGE_IDENTITY" in webhook.public_env(ctx)  # a path: shown in diffs
    assert webhook.problem(ctx) is None
    calls = planned(ctx, monkeypatch, on_node=(webhook.SECRETS_COPY,))
    assert webhook.SECRETS not in calls
    assert calls[webhook.COPY_REMOVED]["commands"] == ["rm -f /etc/fleet/webhook/secrets.yaml"]
    assert webhook.IDENTITY in calls  # none on the node yet: made there


def test_without_a_sealed_file_the_receiver_keeps_the_plaintext_copy(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(registry, replace(FULL, path=Path("/s.yaml")), monkeypatch)
    assert webhook.receiver_env(ctx)["FLEET_SECRETS"] == "/etc/fleet/webhook/secrets.yaml"
    assert "FLEET_AGE_IDENTITY" not in webhook.receiver_env(ctx)
    calls = planned(ctx, monkeypatch, on_node=(webhook.SECRETS_COPY,))
    assert webhook.SECRETS in calls and webhook.COPY_REMOVED not in calls


def test_an_identity_on_the_node_is_left_alone(registry: Registry,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(replace(registry, secrets=SEALED), FULL, monkeypatch)
    calls = planned(ctx, monkeypatch, on_node=(webhook.IDENTITY_FILE, webhook.RECIPIENT_FILE))
    assert webhook.IDENTITY not in calls and webhook.COPY_REMOVED not in calls


def test_the_identity_command_makes_a_0600_identity_once_and_prints_no_key(
        tmp_path: Path) -> None:
    """The node's side of the identity operation (run here with this Python's pyrage): an
    age identity ``age-keygen`` would write (a ``# public key:`` line, then the key) in a file
    created 0600 before its content, its recipient in a 0644 file; run again, the identity is
    kept and the recipient file restored."""
    secret, recipient = tmp_path / "age-identity.txt", tmp_path / "age-recipient.txt"
    command = webhook.identity_command("deploy-tools-0123")
    assert command.startswith("{ [ -e /etc/fleet/webhook/age-identity.txt ] || install -m 600 "
                              "-o fleet-webhook -g fleet-webhook /dev/null "
                              "/etc/fleet/webhook/age-identity.txt.new; } && "
                              "PYTHONPATH=/opt/fleet/tools/deploy-tools-0123/site "
                              "/usr/bin/python3 -c ")
    assert command.endswith(" /etc/fleet/webhook/age-identity.txt "
                            "/etc/fleet/webhook/age-recipient.txt")

    def run() -> str:
        if not secret.exists():  # what install(1) does first on the node
            Path(f"{secret}.new").touch(mode=0o600)
        done = subprocess.run([sys.executable, "-c", webhook.IDENTITY_SCRIPT, str(secret),
                               str(recipient)], capture_output=True, text=True, check=True)
        return done.stdout + done.stderr

    assert run() == ""  # nothing printed: the key stays in its file
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(recipient.stat().st_mode) == 0o644
    [key] = load_identities(secret)
    public = recipient_of(key)
    assert secret.read_text().splitlines() == [f"# public key: {public}", str(key)]
    assert recipient.read_text() == f"{public}\n"
    before = secret.read_text()
    recipient.unlink()
    assert run() == ""
    assert secret.read_text() == before and recipient.read_text() == f"{public}\n"
