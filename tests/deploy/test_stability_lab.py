"""A green deploy means healthy a while later too: a gateway that crashes a few seconds after
its first good answer (systemd ends it after 2 s here, ``RuntimeMaxSec=``, and restarts it)
fails verify, and the run names the restart; a fleet left alone passes again."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bus.client import BusClient
from bus.keys import PRIVATE_KEY_ENV
from fleet.core.registry import load_registry
from tests.deploy.conftest import SECRETS, Fleet
from tests.runtime.conftest import MockProvider

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "allegro"
UNIT = f"fleet-agent-{AGENT}.service"
DROP_IN = f"/etc/systemd/system/{UNIT}.d/zz-crash.conf"
REMOVE_DROP_IN = f"rm -f {DROP_IN} && systemctl daemon-reload"


def edited_registry(fleet: Fleet, tmp_path: Path, config: dict[str, object]) -> Path:
    """A copy of the lab registry (souls beside it) with ``AGENT``'s config set."""
    return edited_registry_from(fleet.registry, tmp_path, config)


def add_drop_in(setting: str) -> str:
    """The shell command that gives ``UNIT`` the ``[Service]`` ``setting`` (a drop-in)."""
    return (f"mkdir -p $(dirname {DROP_IN}) && printf '[Service]\\n{setting}\\n' > {DROP_IN} "
            "&& systemctl daemon-reload")


def deploy_while(fleet: Fleet, registry: Path, set_up: str,
                 undo: str) -> subprocess.CompletedProcess[str]:
    """``fleet deploy --limit AGENT`` of ``registry`` while ``set_up`` (a shell command on
    ``AGENT``'s node) is in effect; ``undo`` runs there afterwards, whatever happened."""
    fleet.ssh(AGENT, set_up)
    try:
        return fleet.run("deploy", "--limit", AGENT, registry=registry)
    finally:
        fleet.ssh(AGENT, undo)


def test_a_gateway_that_crashes_after_start_fails_verify(fleet: Fleet, tmp_path: Path) -> None:
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    edited = edited_registry(fleet, tmp_path, {"temperature": 0.7})  # a change that restarts it
    crashing = deploy_while(fleet, edited, add_drop_in("RuntimeMaxSec=2"),
                            f"{REMOVE_DROP_IN} && systemctl restart {UNIT}")
    assert crashing.returncode == 1, crashing.stdout + crashing.stderr
    entry = fleet.record(crashing.stdout)["hosts"][AGENT]
    assert entry["status"] in ("failed", "rolled_back")
    problems = " ".join(entry["verify"]["problems"])
    # verify's unit-stability watch (fleet-nodectl): the unit left active, or restarted
    assert problems.startswith(UNIT) and ("it does not stay up" in problems or
                                          "restarted during verify" in problems), problems

    again = fleet.run("deploy", "--limit", AGENT, registry=edited)
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.record(again.stdout)["hosts"][AGENT]["status"] == "ok"
    back = fleet.run("deploy")
    assert back.returncode == 0, back.stdout + back.stderr


def test_a_deploy_that_failed_before_its_restart_is_finished_by_the_next(
        fleet: Fleet, tmp_path: Path) -> None:
    """config.json written, then the soul's upload fails: the run names the operation (not
    'unreachable'), and the next deploy, with nothing left to write, restarts the agent
    onto what is on disk instead of '0 changed' and a verify that fails for ever."""
    assert fleet.run("deploy").returncode == 0
    edited = edited_registry(fleet, tmp_path, {"temperature": 0.3})
    soul = tmp_path / "souls" / f"{AGENT}.md"
    original = soul.read_text()
    soul.write_text(original + "\nA changed line.\n")
    blocker = f"/etc/fleet/{AGENT}/soul.md.new"
    # the upload cannot replace a folder
    failed = deploy_while(fleet, edited, f"mkdir -p {blocker}/x", f"rm -rf {blocker}")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    entry = fleet.record(failed.stdout)["hosts"][AGENT]
    assert entry["reason"].startswith("operation failed: Soul | Agent soul"), entry
    assert "Release | Agent config.json" in entry["changed"] and not entry["restarted"]
    soul.write_text(original)  # only the config is new now, and it is already on the node
    again = fleet.run("deploy", "--limit", AGENT, registry=edited)
    assert again.returncode == 0, again.stdout + again.stderr
    entry = fleet.record(again.stdout)["hosts"][AGENT]
    assert (entry["status"], entry["restarted"]) == ("ok", True), entry
    assert fleet.run("deploy").returncode == 0


def test_a_failed_restart_is_named_not_called_unreachable(fleet: Fleet, tmp_path: Path) -> None:
    edited = edited_registry(fleet, tmp_path, {"temperature": 0.4})
    failed = deploy_while(fleet, edited, add_drop_in("ExecStartPre=/bin/false"),
                          REMOVE_DROP_IN)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    entry = fleet.record(failed.stdout)["hosts"][AGENT]
    assert entry["reason"].startswith(
        "operation failed: Services | Agent service restarted"), entry
    assert "unreachable" not in entry["reason"]
    assert fleet.run("deploy").returncode == 0


def test_a_runtime_unit_the_registry_dropped_is_removed(fleet: Fleet) -> None:
    runtime = f"fleet-runtime-{AGENT}.service"
    fleet.ssh(AGENT, f"printf '[Unit]\\nPartOf={UNIT}\\n[Service]\\nExecStart=/bin/false\\n"
                     f"Restart=always\\n[Install]\\nWantedBy={UNIT}\\n' > "
                     f"/etc/systemd/system/{runtime} && mkdir -p /etc/fleet/{AGENT}/ship && "
                     f"systemctl daemon-reload && systemctl enable --now {runtime}")
    done = fleet.run("deploy", "--limit", AGENT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert fleet.ssh(AGENT, f"ls /etc/systemd/system /etc/fleet/{AGENT}; "
                            f"systemctl is-enabled {runtime} || true").split().count(
        runtime) == 0
    entry = fleet.record(done.stdout)["hosts"][AGENT]
    assert "Services | Runtime unit file removed" in entry["changed"]


def test_a_bad_secret_is_undone_by_the_rollback(fleet: Fleet, tmp_path: Path) -> None:
    """A secrets file value that keeps the agent from starting: verify fails, the rollback
    restores the environment it replaced (root's, 0600), and the message names the secrets."""
    assert fleet.run("deploy").returncode == 0
    data = json.loads(json.dumps(SECRETS))
    data["agents"][AGENT]["FLEET_BUS_INBOX_QUOTA"] = "not-a-number"
    bad = tmp_path / "secrets.yaml"
    bad.write_text(json.dumps(data))
    bad.chmod(0o600)
    done = fleet.run("deploy", "--limit", AGENT, extra_env={"FLEET_SECRETS": str(bad)})
    assert done.returncode == 1, done.stdout + done.stderr
    entry = fleet.record(done.stdout)["hosts"][AGENT]
    assert entry["status"] == "rolled_back", entry
    assert entry["verify"]["rollback"]["env_restored"] is True
    assert "this deploy changed the agent's environment" in done.stdout
    assert "and its previous environment, which is healthy" in done.stdout
    env = f"/etc/fleet/{AGENT}/env"
    assert fleet.ssh(AGENT, f"stat -c '%a %U %G' {env}").split() == ["600", "root", "root"]
    assert "FLEET_BUS_INBOX_QUOTA" not in fleet.ssh(AGENT, f"cat {env}")
    assert fleet.run("deploy").returncode == 0


def test_a_wrong_model_key_is_undone_by_the_rollback_and_no_tokens_fail_verify(
        fleet: Fleet, tmp_path: Path) -> None:
    """``AGENT`` thinks with a provider on the lab's bridge (OpenAI's wire format, checking
    its key). A secrets file with a wrong key: verify's live round trip fails, the rollback
    restores the environment that worked and says so. A provider answering no tokens fails
    verify too."""
    data = yaml.safe_load(fleet.registry.read_text())
    provider = MockProvider(host=fleet.controller())
    env_file = f"/etc/fleet/{AGENT}/env"
    try:
        data["wizards"][AGENT]["provider"] = {"base_url": provider.url,
                                              "api_key": "MOCK_API_KEY"}
        registry = tmp_path / "registry.yaml"
        shutil.copytree(fleet.registry.parent / "souls", tmp_path / "souls")
        registry.write_text(yaml.safe_dump(data, sort_keys=False))

        def secrets_with(key: str) -> dict[str, str]:
            values = json.loads(json.dumps(SECRETS))
            values["agents"][AGENT]["MOCK_API_KEY"] = key
            path = tmp_path / f"secrets-{len(key)}-{key[-4:]}.yaml"
            path.write_text(json.dumps(values))
            path.chmod(0o600)
            return {"FLEET_SECRETS": str(path)}

        good = fleet.run("deploy", "--limit", AGENT, registry=registry,
                         extra_env=secrets_with(provider.key))
        assert good.returncode == 0, good.stdout + good.stderr
        wrong = fleet.run("deploy", "--limit", AGENT, registry=registry,
                          extra_env=secrets_with("sk-wrong-KEY-9999"))
        assert wrong.returncode == 1, wrong.stdout + wrong.stderr
        entry = fleet.record(wrong.stdout)["hosts"][AGENT]
        assert entry["status"] == "rolled_back", entry
        assert entry["verify"]["rollback"]["env_restored"] is True
        assert "401" in " ".join(entry["verify"]["problems"]), entry["verify"]
        assert "this deploy changed the agent's environment" in wrong.stdout
        assert "and its previous environment, which is healthy" in wrong.stdout
        assert f'MOCK_API_KEY="{provider.key}"' in fleet.ssh(AGENT, f"cat {env_file}")

        provider.reply, provider.tokens = "", 0  # an empty answer, 0 completion tokens
        silent = fleet.run("deploy", "--limit", AGENT, registry=edited_registry_from(
            registry, tmp_path / "silent", {"temperature": 0.3}),
            extra_env=secrets_with(provider.key))
        assert silent.returncode == 1, silent.stdout + silent.stderr
        entry = fleet.record(silent.stdout)["hosts"][AGENT]
        assert entry["status"] in ("failed", "rolled_back"), entry
        assert "the model answered no tokens" in " ".join(entry["verify"]["problems"]), entry[
            "verify"]
    finally:
        provider.close()
        back = fleet.run("deploy")  # the lab's own registry again: no runtime, no provider
        assert back.returncode == 0, back.stdout + back.stderr


def edited_registry_from(registry: Path, folder: Path, config: dict[str, object]) -> Path:
    """A copy of ``registry`` (souls beside it) with ``AGENT``'s config set."""
    data = yaml.safe_load(registry.read_text())
    data["wizards"][AGENT]["config"] = config
    folder.mkdir(exist_ok=True)
    shutil.copytree(registry.parent / "souls", folder / "souls", dirs_exist_ok=True)
    (folder / "registry.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "registry.yaml"


CHECKS = {"read-own-env": "cat /etc/fleet/allegro/env",
          "read-other-env": "cat /etc/fleet/otheragent/env",
          "read-other-state": "cat /var/lib/fleet/otheragent/notes",
          "write-etc": "touch /etc/fleet/allegro/planted",
          "write-release": "touch /opt/fleet/planted",
          "write-other-state": "touch /var/lib/fleet/otheragent/planted",
          "write-own-state": "touch ./tool-wrote-this"}
PROBE = "; ".join([  # one line, no braces: a registry string holds neither a newline nor {}
    'echo "user:$(id -un)"', *(f"{command} >/dev/null 2>&1 && echo {name}:yes || echo {name}:no"
                               for name, command in CHECKS.items())])


def test_a_declared_tool_runs_as_the_agent_inside_its_sandbox(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    """A tool called through the deployed gateway's API runs as the agent's user in the
    gateway unit's sandbox: it cannot read the env file or another agent's files, and writes
    only in its state dir."""
    other = ("id otheragent >/dev/null 2>&1 || useradd --system otheragent; "
             "install -d -m 700 -o otheragent /var/lib/fleet/otheragent && "
             "echo private > /var/lib/fleet/otheragent/notes && "
             "chown otheragent /var/lib/fleet/otheragent/notes && "
             "chmod 600 /var/lib/fleet/otheragent/notes && install -d -m 700 "
             "/etc/fleet/otheragent && echo K=v > /etc/fleet/otheragent/env && "
             "chmod 600 /etc/fleet/otheragent/env")
    fleet.ssh(AGENT, other)
    data = yaml.safe_load(fleet.registry.read_text())
    data["wizards"][AGENT]["tools"] = {"probe": {
        "description": "What may a tool touch?", "command": ["sh", "-c", PROBE],
        "timeout": 10}}
    shutil.copytree(fleet.registry.parent / "souls", tmp_path / "souls")
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        done = fleet.run("deploy", "--limit", AGENT, registry=registry)
        assert done.returncode == 0, done.stdout + done.stderr
        own = SECRETS["agents"][AGENT][PRIVATE_KEY_ENV]
        with BusClient.for_agent(load_registry(registry), AGENT, {AGENT: own}) as client:
            answer = client.call("POST", "/tools/probe", body={"args": {}})
        assert answer["exit"] == 0, answer
        seen = dict(line.split(":", 1) for line in answer["stdout"].splitlines())
        assert seen == {"user": AGENT, "read-own-env": "no", "read-other-env": "no",
                        "read-other-state": "no", "write-etc": "no", "write-release": "no",
                        "write-other-state": "no", "write-own-state": "yes"}, answer
        assert fleet.ssh(AGENT, f"stat -c %U /var/lib/fleet/{AGENT}/tool-wrote-this").strip() \
            == AGENT
    finally:
        fleet.ssh(AGENT, f"rm -rf /var/lib/fleet/otheragent /etc/fleet/otheragent "
                         f"/var/lib/fleet/{AGENT}/tool-wrote-this")
        back = fleet.run("deploy")
        assert back.returncode == 0, back.stdout + back.stderr


PRE_LAYOUT = "7a143ff"
"""The last commit before the code was laid out by where it runs (fleet/core, fleet/node)."""


def test_a_rollback_to_a_release_from_before_the_layout_starts_under_todays_units(
        fleet: Fleet) -> None:
    """An upgrade's way back: ``AGENT`` deployed by the commit before the layout, then by
    today's (its units rewritten), then ``fleet rollback`` to the first release: it starts
    under today's units and answers healthy (the units name entry points every release has)."""
    git = ["git", "-C", str(fleet.clone), "-c", "advice.detachedHead=false"]
    subprocess.run([*git, "checkout", "-q", PRE_LAYOUT], check=True)
    try:
        old = fleet.run("deploy", "--limit", AGENT)
    finally:
        subprocess.run([*git, "checkout", "-q", "-"], check=True)
    try:
        assert old.returncode == 0, old.stdout + old.stderr
        old_release = fleet.record(old.stdout)["hosts"][AGENT]["release"]
        assert "fleet.gateway.wsgi:app" in fleet.ssh(AGENT, f"systemctl cat {UNIT}")
        assert fleet.ssh(AGENT, f"test -d /opt/fleet/releases/{old_release}/site/fleet/node "
                                "&& echo new || echo old").strip() == "old"
        new = fleet.run("deploy", "--limit", AGENT)
        assert new.returncode == 0, new.stdout + new.stderr
        new_release = fleet.record(new.stdout)["hosts"][AGENT]["release"]
        assert new_release != old_release
        back = fleet.run("rollback", AGENT, "--to", old_release)
        assert back.returncode == 0, back.stdout + back.stderr
        entry = fleet.record(back.stdout)["hosts"][AGENT]
        assert entry["status"] == "ok" and entry["release"] == old_release, entry
        health = json.loads(fleet.ssh(AGENT, "python3 -c \"import urllib.request; print("
                                             "urllib.request.urlopen('http://127.0.0.1:8646/"
                                             "health', timeout=10).read().decode())\""))
        assert health["status"] == "ok" and health["release"] == old_release, health
    finally:
        again = fleet.run("deploy")
        assert again.returncode == 0, again.stdout + again.stderr
