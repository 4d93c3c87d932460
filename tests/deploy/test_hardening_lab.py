"""Hardening checked on real lab nodes: secrets reach the service's environment exactly, the
agent unit rates OK in `systemd-analyze security`, the sshd drop-in never loosens what the
administrator set, a rollback target that is not a release id never reaches a node shell, and
host keys that are not the pinned ones are refused by deploy and status."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import SECRETS, Fleet

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENTS = list(SECRETS["agents"])
HARD = 'line one\nline "two" \'x\' \\ $HOME `id` ${X} %n\n  trailing  '
MAX_EXPOSURE = 2.5


@pytest.fixture(scope="module")
def hard_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test secrets plus one holding a newline, quotes, a backslash and `$`."""
    data = json.loads(json.dumps(SECRETS))
    data["fleet"]["HARD_SECRET"] = HARD
    path = tmp_path_factory.mktemp("hard") / "secrets.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return path


def service_environ(fleet: Fleet, agent: str) -> dict[str, str]:
    """The running agent service's environment, from /proc/PID/environ (NUL-separated)."""
    raw = subprocess.run(
        ["ssh", "-F", str(fleet.registry.parent / "ssh_config"), agent,
         f"cat /proc/$(systemctl show -p MainPID --value fleet-agent-{agent}.service)/environ"],
        capture_output=True, check=True, timeout=60).stdout.decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_a_secret_with_newline_quotes_backslash_and_dollar_arrives_exactly(
        fleet: Fleet, lab_refresh: Callable[[], Path], hard_secrets: Path) -> None:
    assert lab_refresh() == fleet.registry
    done = fleet.run("deploy", extra_env={"FLEET_SECRETS": str(hard_secrets)})
    assert done.returncode == 0, done.stdout + done.stderr
    for agent in AGENTS:
        env = service_environ(fleet, agent)
        assert env["HARD_SECRET"] == HARD
        assert env["FLEET_BUS_PRIVATE_KEY"] == SECRETS["agents"][agent]["FLEET_BUS_PRIVATE_KEY"]
        assert env["FLEET_AGENT"] == agent
    assert all(line not in done.stdout + done.stderr for line in HARD.splitlines())
    again = fleet.run("deploy", extra_env={"FLEET_SECRETS": str(hard_secrets)})
    assert again.returncode == 0, again.stdout + again.stderr
    hosts = fleet.record(again.stdout)["hosts"]
    assert {agent: (hosts[agent]["changed"], hosts[agent]["restarted"]) for agent in AGENTS} == {
        agent: ([], False) for agent in AGENTS}


def test_agent_unit_rates_ok_in_systemd_analyze_security(fleet: Fleet) -> None:
    for agent in AGENTS:
        unit = f"fleet-agent-{agent}.service"
        report = fleet.ssh(agent, f"systemd-analyze security --no-pager {unit}")
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", report)
        assert found, report
        assert float(found.group(1)) <= MAX_EXPOSURE and found.group(2) == "OK", report
        limits = fleet.ssh(agent, f"systemctl show -p MemoryMax -p TasksMax {unit}")
        assert limits.split() == ["MemoryMax=1073741824", "TasksMax=512"]
        assert fleet.ssh(agent, f"systemctl is-active {unit}").strip() == "active"


def test_sshd_drop_in_never_loosens_the_administrators_settings(fleet: Fleet) -> None:
    """Debian's sshd_config includes the drop-ins at its top and sshd keeps the first value it
    reads: an administrator's `PermitRootLogin no` after the include stays `no` (checked with
    `sshd -T` on a copy of the stock config whose only drop-in is the deploy's), while password
    logins are off even where the administrator allowed them."""
    agent = AGENTS[0]
    effective = fleet.ssh(agent, "sshd -T")
    assert "passwordauthentication no" in effective.splitlines()
    admin = ("sed 's|^Include /etc/ssh/sshd_config.d/\\*.conf|Include "
             "/etc/ssh/sshd_config.d/00-fleet.conf|' /etc/ssh/sshd_config > /tmp/admin.conf && "
             "printf 'PermitRootLogin no\\nPasswordAuthentication yes\\nMaxAuthTries 3\\n' "
             ">> /tmp/admin.conf && sshd -T -f /tmp/admin.conf")
    settings = dict(line.split(" ", 1) for line in fleet.ssh(agent, admin).splitlines()
                    if " " in line)
    assert (settings["permitrootlogin"], settings["maxauthtries"],
            settings["passwordauthentication"]) == ("no", "3", "no")


def test_rollback_to_a_value_that_is_not_a_release_id_reaches_no_shell(fleet: Fleet) -> None:
    marker = "/tmp/pwned-by-rollback"
    done = fleet.run("rollback", "bezalel", "--to", f"x;touch {marker};#")
    assert done.returncode != 0
    assert "'x;touch /tmp/pwned-by-rollback;#' is not a release id" in done.stdout + done.stderr
    assert fleet.ssh("bezalel", f"test -e {marker} && echo yes || echo no").strip() == "no"
    nodectl = "/opt/fleet/bin/fleet-nodectl"
    refused = subprocess.run(
        ["ssh", "-F", str(fleet.registry.parent / "ssh_config"), "bezalel",
         f"{nodectl} switch ../../../tmp; echo exit=$?"], capture_output=True, text=True,
        timeout=60, check=False)
    assert "'../../../tmp' is not a release id" in refused.stderr
    assert "exit=2" in refused.stdout


@pytest.fixture
def wrong_keys(fleet: Fleet) -> Path:
    """A registry in the lab's folder whose known_hosts pins a wrong key for allegro."""
    lab = fleet.registry.parent
    keygen = lab / "wrong-key"
    keygen.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keygen)],
                   check=True)
    wrong = (lab / "wrong-key.pub").read_text().split()[:2]
    lines = []
    for line in (lab / "known_hosts").read_text().splitlines():
        hosts = line.split()[0]
        lines.append(f"{hosts} {' '.join(wrong)}" if "allegro" in hosts.split(",") else line)
    (lab / "wrong_known_hosts").write_text("\n".join(lines) + "\n")
    data = yaml.safe_load(fleet.registry.read_text())
    data["fleet"]["known_hosts"] = "wrong_known_hosts"
    registry = lab / "registry-wrong-keys.yaml"
    registry.write_text(yaml.safe_dump(data, sort_keys=False))
    return registry


@pytest.fixture
def control_dir() -> Iterator[str]:
    """A fresh, short folder for ssh master sockets (no connection reused from earlier)."""
    path = tempfile.mkdtemp(prefix="fleet-cm-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_changed_host_key_is_refused_by_deploy_and_status(
        fleet: Fleet, wrong_keys: Path, control_dir: str) -> None:
    host = yaml.safe_load(wrong_keys.read_text())["wizards"]["allegro"]["host"]
    before = fleet.ssh("allegro", "ls -la --time-style=+%s /etc/fleet/allegro /opt/fleet")
    status = fleet.run("status", "--json", registry=wrong_keys,
                       extra_env={"FLEET_SSH_CONTROL_DIR": control_dir})
    assert status.returncode == 1, status.stdout + status.stderr
    agents = {entry["agent"]: entry for entry in json.loads(status.stdout)["agents"]}
    assert agents["allegro"]["ssh"] == (
        f"host key of {host} is changed: refused; After checking the fingerprint against the "
        "server's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on its console), "
        "trust it with `fleet hosts scan allegro`.")
    assert agents["bezalel"]["ssh"] == "ok"
    done = fleet.pyinfra("inventory.py", "deploy.py", "-y", "--limit", "allegro",
                         extra_env={"FLEET_REGISTRY": str(wrong_keys)})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"Host key for {host} does not match" in output and "allegro" in output
    assert fleet.ssh("allegro", "ls -la --time-style=+%s /etc/fleet/allegro /opt/fleet") == before
    known = wrong_keys.parent / "wrong_known_hosts"  # now: no key at all for allegro
    known.write_text("".join(line + "\n" for line in known.read_text().splitlines()
                             if "allegro" not in line.split()[0].split(",")))
    done = fleet.pyinfra("inventory.py", "deploy.py", "-y", "--limit", "allegro",
                         extra_env={"FLEET_REGISTRY": str(wrong_keys)})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert f"no host key pinned for allegro ({host}): it will be refused" in output
    assert "trust it with `fleet hosts scan allegro`" in output
    assert f"No host key for {host} found in known_hosts" in output
    assert fleet.ssh("allegro", "ls -la --time-style=+%s /etc/fleet/allegro /opt/fleet") == before


def test_hosts_scan_records_the_keys_the_nodes_really_have(fleet: Fleet,
                                                           control_dir: str) -> None:
    lab = fleet.registry.parent
    data = yaml.safe_load(fleet.registry.read_text())
    del data["fleet"]["known_hosts"]
    scanned = lab / "scan" / "registry.yaml"
    scanned.parent.mkdir(exist_ok=True)
    (scanned.parent / "known_hosts").unlink(missing_ok=True)
    shutil.copytree(lab / "souls", scanned.parent / "souls", dirs_exist_ok=True)
    scanned.write_text(yaml.safe_dump(data, sort_keys=False))
    refused = fleet.run("status", registry=scanned)
    assert refused.returncode == 1
    assert "fleet.known_hosts is not set" in refused.stderr
    done = fleet.run("hosts", "scan", registry=scanned)
    assert done.returncode == 0, done.stdout + done.stderr
    for agent in AGENTS:
        real = fleet.ssh(agent, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        assert re.search(rf"^{agent} +\S+ +ssh-ed25519 +{re.escape(real)} +\(new\)$",
                         done.stdout, re.M), done.stdout
    assert "The registry sets no known_hosts" in done.stdout
    data["fleet"]["known_hosts"] = "known_hosts"
    scanned.write_text(yaml.safe_dump(data, sort_keys=False))
    status = fleet.run("status", "--json", registry=scanned,
                       extra_env={"FLEET_SSH_CONTROL_DIR": control_dir})
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_host_key_changed_under_a_shared_master_is_seen_by_the_next_status(
        fleet: Fleet, control_dir: str) -> None:
    """``fleet status`` shares SSH masters between runs; a node whose host key changes
    meanwhile is down on the next status (naming the key it offers now), not ``ok`` over the
    master opened before, and that master is closed."""
    env = {"FLEET_SSH_CONTROL_DIR": control_dir}
    host = yaml.safe_load(fleet.registry.read_text())["wizards"]["allegro"]["host"]

    def ssh_of(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
        return {entry["agent"]: entry["ssh"] for entry in json.loads(done.stdout)["agents"]}

    first = fleet.run("status", "--json", extra_env=env)  # opens the shared masters
    assert ssh_of(first)["allegro"] == "ok", first.stdout + first.stderr
    masters = set(Path(control_dir).iterdir())
    assert len(masters) == len(AGENTS)
    fleet.ssh("allegro", "mkdir -p /root/hostkeys && cp -a /etc/ssh/ssh_host_* /root/hostkeys/ "
                         "&& rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh")
    try:
        new = fleet.ssh("allegro", "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
        second = fleet.run("status", "--json", extra_env=env)
        assert second.returncode == 1, second.stdout + second.stderr
        assert ssh_of(second)["allegro"] == (
            f"host key of {host} is changed (it now offers ssh-ed25519 {new}): refused; After "
            "checking the fingerprint against the server's own (`ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub` on its console), trust it with "
            "`fleet hosts scan allegro`.")
        assert {agent: state for agent, state in ssh_of(second).items()
                if agent != "allegro"} == {agent: "ok" for agent in AGENTS if agent != "allegro"}
        assert len(set(Path(control_dir).iterdir())) == len(AGENTS) - 1  # its master closed
        third = fleet.run("status", "--json", extra_env=env)
        assert ssh_of(third)["allegro"].startswith(f"host key of {host} is changed")
    finally:
        fleet.ssh("allegro", "cp -a /root/hostkeys/ssh_host_* /etc/ssh/ && "
                             "systemctl restart ssh && rm -rf /root/hostkeys")
    again = fleet.run("status", "--json", extra_env=env)
    assert ssh_of(again)["allegro"] == "ok", again.stdout + again.stderr
