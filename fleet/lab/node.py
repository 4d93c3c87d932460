"""One lab node: its overlay root, injected identity, the nspawn process and readiness."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet.core.errors import LabError
from fleet.lab import processes
from fleet.lab.commands import run
from fleet.lab.keys import HOST_KEY
from fleet.lab.paths import cgroup_dirs
from fleet.lab.rootfs import ADMIN_USER

NODES_DIR = "nodes"
READY_TIMEOUT = 120.0
READY_ATTEMPT = 10
SPAWN_SCRIPT = ('for f in "$1" "$2"; do [ -z "$f" ] || echo $$ > "$f" || exit 97; done; '
                'shift 2; exec "$@"')
"""Join the node's cgroups (v1 name=systemd, unified), then become systemd-nspawn."""


@dataclass(frozen=True)
class NodePaths:
    """Files and folders of one node under ``<lab dir>/nodes/<name>``."""

    base: Path

    @classmethod
    def of(cls, lab_path: Path, name: str) -> NodePaths:
        return cls(lab_path / NODES_DIR / name)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def pidfile(self) -> Path:
        return self.base / "pid"

    @property
    def console(self) -> Path:
        return self.base / "console.log"

    def pid(self) -> int | None:
        """The recorded nspawn pid, if any."""
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def mount_overlay(paths: NodePaths, base: Path) -> None:
    """Mount a fresh overlay (lower = shared base) as the node's root."""
    for folder in (paths.upper, paths.work, paths.root):
        folder.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={base},upperdir={paths.upper},workdir={paths.work}"
    run(["mount", "-t", "overlay", "overlay", "-o", options, str(paths.root)])


ROOT_LOGIN_OFF = "etc/ssh/sshd_config.d/10-fleet-lab-no-root.conf"


def inject_identity(root: Path, name: str, host_key: Path, lab_public_key: str,
                    ssh_port: int, ssh_user: str, hosts: dict[str, str],
                    root_login: bool = True) -> None:
    """Hostname, host key, sshd port, /etc/hosts, and the lab key for root, the sudo user
    and the agent's ``ssh_user`` (created with passwordless sudo if the image lacks it);
    without ``root_login``, sshd refuses root (``PermitRootLogin no``)."""
    (root / "etc/hostname").write_text(f"{name}\n")
    for suffix in ("", ".pub"):
        target = root / "etc/ssh" / f"{HOST_KEY}{suffix}"
        shutil.copyfile(f"{host_key}{suffix}", target)
        target.chmod(0o600 if not suffix else 0o644)
    if ssh_port != 22:
        (root / "etc/ssh/sshd_config.d/fleet-lab-port.conf").write_text(f"Port {ssh_port}\n")
    if not root_login:
        (root / ROOT_LOGIN_OFF).write_text("PermitRootLogin no\n")
    _authorize(root / "root", lab_public_key)
    for user in dict.fromkeys((ADMIN_USER, ssh_user)):
        if user == "root":
            continue
        if not (root / "home" / user).is_dir():
            run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", user])
            sudoers = root / "etc/sudoers.d" / user
            sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
            sudoers.chmod(0o440)
        _authorize(root / "home" / user, lab_public_key)
    lines = ["127.0.0.1 localhost", f"127.0.1.1 {name}", "::1 localhost ip6-localhost"]
    lines += [f"{ip} {host}" for host, ip in hosts.items()]
    (root / "etc/hosts").write_text("\n".join(lines) + "\n")


def _authorize(home: Path, public_key: str) -> None:
    """Put the lab key in ``home/.ssh/authorized_keys``, owned by the home's owner."""
    owner = (home.stat().st_uid, home.stat().st_gid)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(f"{public_key} fleet-lab\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, *owner)


def start(paths: NodePaths, lab: str, name: str, netns: str) -> int:
    """Boot the node in its own session and cgroups; return the nspawn pid.

    nspawn stays a child of this process (no double fork), so a long-lived caller such as
    pytest reaps it at ``down`` instead of leaving it to PID 1.
    """
    cgroups = cgroup_dirs(lab, name)
    for cgroup in cgroups:
        cgroup.mkdir(parents=True, exist_ok=True)
    procs = [str(c / "cgroup.procs") for c in cgroups] + [""] * (2 - len(cgroups))
    command = ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--console=passive",
               "--link-journal=no", "-D", str(paths.root), "-M", name,
               f"--network-namespace-path=/run/netns/{netns}", "-b"]
    argv = ["sh", "-c", SPAWN_SCRIPT, "sh", *procs[:2], *command]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(paths.console), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
         0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    sh = shutil.which("sh") or "/bin/sh"
    pid = os.posix_spawn(sh, argv, os.environ, file_actions=actions, setsid=True)
    paths.pidfile.write_text(f"{pid}\n")
    return pid


def ssh_base(ssh_config: Path, name: str) -> list[str]:
    """ssh arguments for a one-off connection to ``name`` (no connection sharing)."""
    return ["ssh", "-F", str(ssh_config), "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-o", "ConnectTimeout=2", name]


def wait_ready(paths: NodePaths, ssh_config: Path, name: str, pid: int,
               timeout: float = READY_TIMEOUT,
               checkpoint: Callable[[], None] = lambda: None) -> list[str]:
    """Wait until SSH works and systemd finished booting; return failed units (degraded).

    ``checkpoint`` runs between attempts and may raise to stop waiting.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        checkpoint()
        if not processes.alive(pid):
            raise LabError(f"node {name}: systemd-nspawn exited during boot: "
                           f"{_tail(paths.console)}", hint=f"See {paths.console}.")
        result = subprocess.run(
            [*ssh_base(ssh_config, name),
             f"timeout {READY_ATTEMPT} systemctl is-system-running --wait"],
            capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        state = result.stdout.strip()
        if result.returncode == 255:
            last = result.stderr.strip()
            time.sleep(0.2)
            continue
        if state == "running":
            return []
        if state == "degraded":
            failed = subprocess.run(
                [*ssh_base(ssh_config, name), "systemctl --failed --plain --no-legend --no-pager"],
                capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
            return [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
        last = f"systemctl is-system-running said {state!r}"
        time.sleep(0.2)
    raise LabError(f"node {name} was not ready after {timeout:.0f} s: {last}",
                   hint=f"See {paths.console}.")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "(no console log)"
    return " | ".join(text[-lines:]) or "(empty console log)"
