"""Run ``bench/ansible/site.yml``: the bench's own Ansible environment (ansible-core and
mitogen from PyPI, never in the project's venv), the inventory generated from the registry,
and the play recap read back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAYBOOK = HERE / "site.yml"
CONFIG = HERE / "ansible.cfg"
VENV_ENV = "FLEET_BENCH_ANSIBLE_VENV"
DEFAULT_VENV = Path("/var/cache/sovereign-fleet/bench-ansible-venv")
REQUIREMENTS = ("ansible-core", "mitogen")
# "name : ok=16 changed=0 unreachable=0 failed=0 skipped=4 rescued=0 ignored=0"
RECAP_RE = re.compile(r"(?P<host>[\w.-]+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)")


class AnsibleUnavailable(RuntimeError):
    """ansible-core (or mitogen) could not be installed into the bench's environment."""


def venv_path() -> Path:
    return Path(os.environ.get(VENV_ENV) or DEFAULT_VENV)


def ensure_venv(venv: Path | None = None) -> Path:
    """The bench's Ansible virtualenv, created and filled from PyPI when missing."""
    venv = venv or venv_path()
    playbook = venv / "bin" / "ansible-playbook"
    if playbook.exists() and mitogen_strategies(venv).is_dir():
        return venv
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *REQUIREMENTS],
                       check=True, capture_output=True, text=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise AnsibleUnavailable(f"cannot install {' '.join(REQUIREMENTS)} into {venv}: "
                                 f"{str(detail).strip()[-500:]}") from exc
    return venv


def mitogen_strategies(venv: Path) -> Path:
    """The strategy plugin folder of the venv's mitogen (``mitogen_linear``)."""
    found = sorted(venv.glob("lib/python3*/site-packages/ansible_mitogen/plugins/strategy"))
    return found[0] if found else venv / "missing-mitogen"


def generate_inventory(checkout: Path, registry: Path, out: Path) -> Path:
    """``inventory_gen.py`` run with ``checkout``'s fleet code (its release and templates)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("FLEET_BROKEN_RELEASE", None)
    done = subprocess.run([sys.executable, str(HERE / "inventory_gen.py"), str(registry),
                           str(out)], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"inventory_gen.py failed: {done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def playbook_command(venv: Path, inventory: Path, mitogen: bool,
                     control_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The ``ansible-playbook`` command and environment; ``control_dir`` holds the SSH
    ControlPersist sockets (one per lab, so a fresh lab never meets an old master)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(CONFIG), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
           "ANSIBLE_LOCAL_TEMP": str(control_dir / "tmp")}
    if mitogen:
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(mitogen_strategies(venv))
        env["ANSIBLE_STRATEGY"] = "mitogen_linear"
    return [str(venv / "bin" / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)], env


def close_masters(control_dir: Path) -> None:
    """End the SSH ControlPersist masters a run left (they would idle out after 60 s)."""
    for socket in control_dir.glob("*"):
        if socket.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "lab"],
                           capture_output=True, check=False)


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP counts per host (``{"node": {"ok": 16, "changed": 0, ...}}``)."""
    _, found, tail = output.rpartition("PLAY RECAP")
    if not found:
        return {}
    counts = {}
    for line in tail.splitlines():
        match = RECAP_RE.fullmatch(line.strip())
        if match:
            counts[match["host"]] = {key: int(value) for key, value in
                                     (item.split("=") for item in match["counts"].split())}
    return counts
