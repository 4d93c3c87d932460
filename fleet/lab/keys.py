"""The lab SSH key and per-node host keys (cached so known_hosts survives down/up)."""

from __future__ import annotations

from pathlib import Path

from fleet.lab.commands import run

LAB_KEY = "id_ed25519"
HOST_KEY = "ssh_host_ed25519_key"
HOST_KEYS_DIR = "hostkeys"


def ensure_lab_key(lab_path: Path, lab: str) -> Path:
    """The lab's unencrypted ed25519 private key, generated on first use."""
    key = lab_path / LAB_KEY
    if not key.exists():
        lab_path.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fleet-lab-{lab}",
             "-f", str(key)])
    return key


def ensure_host_key(lab_path: Path, node: str) -> Path:
    """The node's ed25519 host private key, generated once per node name."""
    key = lab_path / HOST_KEYS_DIR / node / HOST_KEY
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{node}",
             "-f", str(key)])
    return key


def public_key(private_key: Path) -> str:
    """The ``TYPE BASE64`` part of the matching ``.pub`` file (comment dropped)."""
    fields = Path(f"{private_key}.pub").read_text().split()
    return f"{fields[0]} {fields[1]}"
