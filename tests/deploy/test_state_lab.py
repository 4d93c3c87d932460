"""State snapshots, backup and restore on the nspawn lab, from a clean clone (``fleet state``,
``fleet rollback --with-state``).

One lab for the module: the ``converged`` fixture re-creates the nodes and deploys once; the
``restarting_deploys`` fixture then deploys three config changes to bezalel (each restarts it,
so each leaves a snapshot). Every test also runs alone: what it needs comes from a fixture.
The agent's state changes are read through its gateway (``fleet bus tail``).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import stat
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import SECRETS, Fleet
from tests.deploy.test_deploy_lab import edited_registry
from tests.lab_fixtures import fresh_lab
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
AGENT = "bezalel"
SENDER = "ezra-primary"
STATE = f"/var/lib/fleet/{AGENT}"
MARKER = f"{STATE}/memory.txt"
NOTES_DB = f"{STATE}/notes.db"
NOTES = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
         "db.execute('PRAGMA journal_mode=WAL'); "
         "db.execute('CREATE TABLE IF NOT EXISTS notes (text TEXT)'); "
         "db.execute('INSERT INTO notes VALUES (?)', (sys.argv[2],)); db.commit()")


@pytest.fixture(scope="module")
def converged(fleet: Fleet, session_lab_name: str) -> str:
    """Fresh nodes, deployed once; bezalel's state dir gets a marker file and a SQLite db of
    its own (as its user) beside the bus store. The release deployed."""
    assert fresh_lab(session_lab_name) == fleet.registry
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    fleet.ssh(AGENT, f"echo remembered > {MARKER} && chown {AGENT}: {MARKER} && "
              f"runuser -u {AGENT} -- python3 -c {shlex.quote(NOTES)} {NOTES_DB} first")
    return str(fleet.record(done.stdout)["release"])


def snapshot_list(fleet: Fleet) -> list[str]:
    """The snapshot ids ``fleet state list`` prints for bezalel, newest first."""
    done = fleet.run("state", "list", AGENT)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split()[0] for line in done.stdout.splitlines() if line[:1].isdigit()]


@pytest.fixture(scope="module")
def restarting_deploys(fleet: Fleet, converged: str,
                       tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """Three deploys, each changing bezalel's config (so each restarts it); the snapshot ids
    listed before and after them."""
    before = snapshot_list(fleet)
    for step, temperature in enumerate((0.1, 0.2, 0.3)):
        edited = edited_registry(fleet, tmp_path_factory.mktemp(f"config-{step}"),
                                 {AGENT: {"config": {"temperature": temperature}}})
        done = fleet.run("deploy", registry=edited)
        assert done.returncode == 0, done.stdout + done.stderr
        entry = fleet.record(done.stdout)["hosts"][AGENT]
        assert entry["restarted"] is True, entry
        assert any("state snapshotted" in name for name in entry["changed"]), entry
    return before, snapshot_list(fleet)


def inbox(fleet: Fleet) -> list[str]:
    """The ids of the messages in bezalel's inbox, read through its gateway."""
    done = fleet.run("bus", "tail", AGENT, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()]


def delivered(fleet: Fleet, label: str) -> str:
    """Send bezalel a message from the orchestrator and wait until it is in its inbox."""
    message_id = f"{label}-{uuid.uuid4()}"
    sent = fleet.run("bus", "send", AGENT, "request", json.dumps({"task": label}),
                     "--from", SENDER, "--id", message_id)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: message_id in inbox(fleet), 60, f"{message_id} in {AGENT}'s inbox",
             every=0.5)
    return message_id


def node_hashes(fleet: Fleet) -> dict[str, str]:
    """sha256 of every regular file in bezalel's state dir (SQLite side files left out)."""
    output = fleet.ssh(AGENT, f"cd {STATE} && find . -type f ! -name '*-wal' ! -name '*-shm' "
                              "! -name '*-journal' -print0 | xargs -0 -r sha256sum")
    return {line.split("  ", 1)[1][2:]: line.split("  ", 1)[0]
            for line in output.splitlines() if line.strip()}


def test_three_deploys_that_restart_the_agent_leave_three_snapshots(
        fleet: Fleet, converged: str, restarting_deploys: tuple[list[str], list[str]]) -> None:
    before, after = restarting_deploys
    new = [ident for ident in after if ident not in before]
    assert len(new) == 3, (before, after)
    listing = fleet.run("state", "list", AGENT).stdout
    for ident in new:  # each names the release it was taken under and the one deployed
        line = next(line for line in listing.splitlines() if line.startswith(ident))
        assert f"release {converged} -> {converged}" in line, line
    again = fleet.run("deploy")  # back to no config: restarts bezalel once more
    assert again.returncode == 0, again.stdout + again.stderr
    unchanged = fleet.run("deploy")  # nothing changes: nothing restarts, nothing snapshotted
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    hosts = fleet.record(unchanged.stdout)["hosts"]
    assert {name: (entry["changed"], entry["restarted"]) for name, entry in hosts.items()} == {
        name: ([], False) for name in hosts}
    assert len(snapshot_list(fleet)) == len(after) + 1


def test_restore_brings_back_the_state_before_a_later_change(fleet: Fleet,
                                                             converged: str) -> None:
    kept = delivered(fleet, "kept")
    taken = fleet.run("state", "backup", AGENT, "--to", str(fleet.records / "backups"))
    assert taken.returncode == 0, taken.stdout + taken.stderr
    snapshot = snapshot_list(fleet)[0]  # the backup's, taken now
    later = delivered(fleet, "later")  # the agent's state changes after the snapshot
    fleet.ssh(AGENT, f"runuser -u {AGENT} -- python3 -c {shlex.quote(NOTES)} {NOTES_DB} later")
    done = fleet.run("state", "restore", AGENT, "--snapshot", snapshot)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{AGENT}: state restored from snapshot {snapshot}; healthy" in done.stdout
    messages = inbox(fleet)
    assert kept in messages and later not in messages
    notes = fleet.ssh(AGENT, f"runuser -u {AGENT} -- python3 -c \"import sqlite3; db = "
                             f"sqlite3.connect('{NOTES_DB}'); print(db.execute('PRAGMA "
                             "integrity_check').fetchone()[0], [r[0] for r in db.execute("
                             "'SELECT text FROM notes')])\"")
    assert notes.split(" ", 1) == ["ok", "['first']\n"]
    owners = fleet.ssh(AGENT, f"stat -c '%U' {STATE} {MARKER} {NOTES_DB}").split()
    assert owners == [AGENT] * 3  # owner and mode as in the snapshot


def test_backup_then_wipe_then_restore_from_the_file_gives_identical_files(
        fleet: Fleet, converged: str, tmp_path: Path) -> None:
    done = fleet.run("state", "backup", AGENT, "--to", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    (backup,) = tmp_path.glob(f"{AGENT}-*.tar")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with tarfile.open(backup) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        manifest: dict[str, Any] = json.loads(handle.read())
        for entry in manifest["files"]:
            if entry["type"] == "file":  # the copy in the file is the manifest's
                data = tar.extractfile(f"data/{entry['path']}")
                assert data is not None
                assert hashlib.sha256(data.read()).hexdigest() == entry["sha256"]
    files = {entry["path"]: entry for entry in manifest["files"] if entry["type"] == "file"}
    assert {"memory.txt", "notes.db"} <= set(files)
    original = node_hashes(fleet)
    assert original["memory.txt"] == files["memory.txt"]["sha256"]
    fleet.ssh(AGENT, f"systemctl stop fleet-agent-{AGENT}.service && rm -rf {STATE}")
    try:
        restored = fleet.run("state", "restore", AGENT, "--from", str(backup))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        # nothing writes while we compare (PartOf=: a runtime stops with its gateway)
        fleet.ssh(AGENT, f"systemctl stop fleet-agent-{AGENT}.service")
        now = node_hashes(fleet)
        assert set(now) >= set(files)
        # what the agent does not write itself is back byte for byte: the marker and the
        # test's own database; the rest was checked against the manifest as it was restored
        for name in ("memory.txt", "notes.db"):
            assert now[name] == files[name]["sha256"], name
        stable = {name for name, entry in files.items() if not entry["sqlite"]
                  and name not in ("runtime.json",) and original.get(name) == entry["sha256"]}
        assert {name: now[name] for name in stable} == {name: original[name] for name in stable}
    finally:  # as the deploy left it, should the restore have failed
        fleet.ssh(AGENT, f"[ -d {STATE} ] || install -d -o {AGENT} -g {AGENT} -m 700 {STATE}; "
                         f"systemctl start fleet-agent-{AGENT}.service; "
                         f"systemctl start fleet-runtime-{AGENT}.service 2>/dev/null || true")


def test_rollback_with_state_brings_back_release_key_and_state(
        fleet: Fleet, converged: str, tmp_path: Path) -> None:
    """A new release deployed with a new provider key; ``fleet rollback bezalel
    --with-state`` brings back bezalel's release, state and the key it had before."""
    before_release = delivered(fleet, "before-release")
    key_line = f'OPENROUTER_API_KEY="{SECRETS["fleet"]["OPENROUTER_API_KEY"]}"'
    env = f"/etc/fleet/{AGENT}/env"
    assert key_line in fleet.ssh(AGENT, f"cat {env}").splitlines()
    git = ["git", "-C", str(fleet.clone), "-c", "user.name=test", "-c",
           "user.email=test@localhost"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a new release"], check=True)
    new_key = tmp_path / "secrets.yaml"
    new_key.write_text(json.dumps({**SECRETS, "fleet": {
        "OPENROUTER_API_KEY": "sk-or-test-NEWKEY-9f8e7d6c"}}))
    new_key.chmod(0o600)
    try:
        done = fleet.run("deploy", extra_env={"FLEET_SECRETS": str(new_key)})
    finally:  # later deploys of this module build the converged release again
        subprocess.run([*git, "reset", "-q", "--hard", "HEAD~1"], check=True)
    assert done.returncode == 0, done.stdout + done.stderr
    new_release = fleet.record(done.stdout)["release"]
    previous = fleet.ssh(AGENT, "readlink /opt/fleet/current").strip().rsplit("/", 1)[-1]
    assert previous == new_release
    assert 'OPENROUTER_API_KEY="sk-or-test-NEWKEY-9f8e7d6c"' in fleet.ssh(AGENT, f"cat {env}")
    after_release = delivered(fleet, "after-release")
    rolled = fleet.run("rollback", AGENT, "--with-state")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    entry = fleet.record(rolled.stdout)["hosts"][AGENT]
    assert (entry["status"], entry["release"]) == ("ok", converged), entry
    assert any(name.startswith("Rollback | agent state restored from snapshot")
               for name in entry["changed"]), entry
    assert any(name.startswith("Rollback | agent environment restored from snapshot")
               for name in entry["changed"]), entry
    assert key_line in fleet.ssh(AGENT, f"cat {env}").splitlines()
    assert fleet.ssh(AGENT, f"stat -c '%a %U %G' {env}").split() == ["600", "root", "root"]
    now = fleet.ssh(AGENT, "readlink /opt/fleet/current").strip().rsplit("/", 1)[-1]
    assert now != new_release
    messages = inbox(fleet)
    assert before_release in messages and after_release not in messages
    status = fleet.run("status")  # the others stay on the new release: only bezalel's row
    row = next(line.split() for line in status.stdout.splitlines() if line.startswith(AGENT))
    assert row[3:6] == ["ok", "ok", converged], status.stdout
