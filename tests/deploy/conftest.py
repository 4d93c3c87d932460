"""Fixtures of the deploy lab tests: a clean clone, a secrets file, and runners that keep every
line of output (so the secrets test can search all of it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bus.keys import IDENTITIES, PRIVATE_KEY_ENV, new_private_key
from fleet import lab
from fleet.core.registry import load_registry
from fleet.lab.network import controller_ip, read_index
from tests.lab_fixtures import EXAMPLE_REGISTRY, claim_test_lab, skip_unless_root

REPO = Path(__file__).resolve().parents[2]
SECRETS: dict[str, dict[str, Any]] = {  # fleet: env; agents, identities: env by name
    "fleet": {"OPENROUTER_API_KEY": "sk-or-test-SECRET-1a2b3c4d"},
    "agents": {name: {PRIVATE_KEY_ENV: new_private_key()}
               for name in ("ezra-primary", "bezalel", "allegro")},
    "identities": {name: {PRIVATE_KEY_ENV: new_private_key()} for name in IDENTITIES},
}

COLD_CHANGES = [  # every state-changing operation of a deploy to a fresh node, in order
    "Baseline | Agent user and group (system, no login shell)",
    "Baseline | Fleet directories (owners and modes)",
    "Baseline | sshd: no password logins (checked, then reloaded)",
    "Release | Node helper module (fleet-nodectl runs it)",
    "Release | Node helper fleet-nodectl",
    "Release | Release unpacked",
    "Release | Current release switched",
    "Release | Agent registry.yaml",
    "Release | Agent config.json",
    "Soul | Agent soul (read-only)",
    "Keys | Agent environment (secrets masked)",
    "Services | Agent unit file",
    "Services | systemd daemon-reload (unit file changed)",
    "Services | Agent service enabled and running",
    "Sandbox | Sandbox policy (root's: the test command, its limits, its network allowlist)",
    "Sandbox | Sandbox socket unit",
    "Sandbox | Sandbox front door unit",
    "Sandbox | systemd daemon-reload (sandbox units changed)",
    "Sandbox | Sandbox socket enabled and listening (restarted when its file changed)",
]


def secret_values() -> list[str]:
    """Every secret value the tests put in the secrets file."""
    return [value for env in [SECRETS["fleet"], *SECRETS["agents"].values(),
                              *SECRETS["identities"].values()]
            for value in env.values()]


@dataclass
class Fleet:
    """Runs ``fleet`` and ``pyinfra`` from a clean clone against the lab; keeps all output."""

    clone: Path
    registry: Path
    env: dict[str, str]
    records: Path
    transcript: list[str] = field(default_factory=list)

    def run(self, *args: str, registry: Path | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``fleet --registry R ARGS`` (exit code not checked)."""
        command = [sys.executable, "-c", "from fleet.cli import main; main()",
                   "--registry", str(registry or self.registry), *args]
        return self._run(command, extra_env)

    def pyinfra(self, *args: str,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``pyinfra ARGS`` from the clone's root (exit code not checked)."""
        return self._run([sys.executable, "-m", "pyinfra", *args], extra_env)

    def _run(self, command: list[str],
             extra_env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(command, cwd=self.clone, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=600, check=False)
        self.transcript.append(done.stdout + done.stderr)
        return done

    def record(self, output: str) -> dict[str, Any]:
        """The run record named in ``fleet deploy``/``rollback`` output."""
        for line in reversed(output.splitlines()):
            if "(record: " in line:
                path = line.rsplit("(record: ", 1)[1].rstrip(")")
                data: dict[str, Any] = json.loads(Path(path).read_text())
                return data
        raise AssertionError(f"no record named in output:\n{output}")

    def controller(self) -> str:
        """The controller's address on the lab's bridge: where the nodes reach it (a stand-in
        listening on loopback is out of their reach)."""
        index = read_index(self.registry.parent)
        assert index is not None, f"no lab index in {self.registry.parent}"
        return controller_ip(index)

    def ssh(self, agent: str, command: str) -> str:
        """Run a command on a lab node; its stdout."""
        config = self.registry.parent / "ssh_config"
        done = subprocess.run(["ssh", "-F", str(config), agent, command], capture_output=True,
                              text=True, timeout=60, check=True)
        return done.stdout


WORKTREE_ENV = "FLEET_TEST_WORKTREE"


def clone_repo(clone: Path) -> None:
    """A clean clone of HEAD; with ``$FLEET_TEST_WORKTREE=1`` (while developing) the work tree's
    uncommitted files are committed on top of it in the clone, so a clean release is built."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if os.environ.get(WORKTREE_ENV) != "1":
        return
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    names = [name for name in listed.decode().split("\0") if name]
    for name in subprocess.run(["git", "-C", str(clone), "ls-files", "-z"], capture_output=True,
                               check=True).stdout.decode().split("\0"):
        if name and not (REPO / name).exists():
            (clone / name).unlink()
    for name in names:
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes(source.read_bytes())
            (clone / name).chmod(source.stat().st_mode & 0o777)
    git = ["git", "-C", str(clone), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "work tree"], check=True)


@pytest.fixture(scope="module")
def fleet(lab_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """A clean clone of the repo's HEAD wired to the session lab, a 0600 secrets file, and a
    records dir of its own."""
    return make_fleet(lab_registry, tmp_path_factory.mktemp("deploy"))


def make_fleet(lab_registry: Path, base: Path) -> Fleet:
    """A clean clone in ``base`` wired to the lab of ``lab_registry``, with its secrets file
    and records dir."""
    clone = base / "repo"
    clone_repo(clone)
    secrets = base / "secrets.yaml"
    secrets.write_text(json.dumps(SECRETS))
    secrets.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(clone), "FLEET_REGISTRY": str(lab_registry),
           "FLEET_RECORDS_DIR": str(base / "records"), "FLEET_SECRETS": str(secrets)}
    for name in ("FLEET_BROKEN_RELEASE", "FLEET_RELEASE_ID", "FLEET_RELEASE_ARTIFACT",
                 "FLEET_RUN_ID"):
        env.pop(name, None)
    return Fleet(clone=clone, registry=lab_registry, env=env, records=base / "records")


@contextmanager
def own_lab(name: str, base: Path, **options: Any) -> Iterator[Fleet]:
    """A clean clone in ``base`` wired to a lab of its own (``pytest-NAME``, or ``...-2`` when
    another session holds it), booted afresh from the example registry with ``lab.up``'s
    ``options`` and taken down afterwards."""
    skip_unless_root()
    claimed = claim_test_lab(name)
    try:
        lab.down(claimed.lab)
        registry = lab.up(load_registry(EXAMPLE_REGISTRY), lab=claimed.lab, **options)
        yield make_fleet(registry, base)
    finally:
        lab.down(claimed.lab)
        claimed.release()


@pytest.fixture(scope="module")
def unit_state(fleet: Fleet) -> Callable[[], dict[str, str]]:
    """MainPID and ActiveEnterTimestamp of every agent's unit, by agent."""
    def read() -> dict[str, str]:
        return {agent: fleet.ssh(agent, f"systemctl show fleet-agent-{agent}.service "
                                 "-p MainPID -p ActiveEnterTimestamp").strip()
                for agent in SECRETS["agents"]}
    return read
