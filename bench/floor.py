"""The floor of a no-change deploy on this machine: what no deploy tool written in Python on
pyinfra can go below. One process that starts the interpreter, imports pyinfra's CLI (as every
pyinfra run does), opens one SSH connection per host in parallel with pyinfra's transport
(paramiko, the lab's key and pinned host keys) and runs one command on each.

    python bench/floor.py REGISTRY [--runs 5]

Also reported apart: the interpreter with the imports alone, and OpenSSH's ``ssh HOST true``
to every host in parallel (no connection sharing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

IMPORTS = "import pyinfra_cli.main, pyinfra.api, pyinfra.connectors.ssh"
# Run in a fresh interpreter: imports, then one connection and round trip per host.
PROBE = IMPORTS + """
import json, sys
from concurrent.futures import ThreadPoolExecutor
import paramiko
targets = json.loads(sys.argv[1])
def probe(t):
    client = paramiko.SSHClient()
    client.load_host_keys(t["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(t["host"], port=t["port"], username=t["user"], key_filename=t["key"],
                   look_for_keys=False, allow_agent=False, timeout=30)
    _, out, _ = client.exec_command("true")
    status = out.channel.recv_exit_status()
    client.close()
    return status
with ThreadPoolExecutor(len(targets)) as pool:
    assert not any(pool.map(probe, targets))
"""


def targets(registry_path: Path) -> list[dict[str, Any]]:
    """Host, port, user, key and known_hosts of every agent, and OpenSSH's arguments: the
    deploy's SSH settings (:func:`fleet.control.hosts.ssh_settings`)."""
    from fleet.control.hosts import ssh_settings
    from fleet.core.registry import load_registry

    registry = load_registry(registry_path)
    found = []
    for agent in registry:
        settings = ssh_settings(agent, registry)
        found.append({"host": settings.host, "port": settings.port, "user": settings.user,
                      "key": settings.key, "known_hosts": settings.known_hosts,
                      "ssh": [*settings.ssh_args(), settings.destination]})
    return found


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def openssh_parallel(hosts: list[dict[str, Any]]) -> float:
    """Seconds for ``ssh HOST true`` to every host at once (fresh connections)."""
    def one(target: dict[str, Any]) -> None:
        subprocess.run(["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none",
                        *target["ssh"], "true"], check=True, capture_output=True)
    started = time.perf_counter()
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(one, hosts))
    return time.perf_counter() - started


def measure(registry_path: Path, runs: int = 5) -> dict[str, Any]:
    """Median seconds of: the floor (imports + parallel paramiko round trips), the imports
    alone, the bare interpreter, and parallel OpenSSH round trips."""
    hosts = targets(registry_path)
    python = sys.executable
    floor = [_timed([python, "-c", PROBE, json.dumps(hosts)]) for _ in range(runs)]
    imports = [_timed([python, "-c", IMPORTS]) for _ in range(runs)]
    bare = [_timed([python, "-c", "pass"]) for _ in range(runs)]
    ssh = [openssh_parallel(hosts) for _ in range(runs)]
    return {"hosts": len(hosts), "runs": runs, "floor_s": statistics.median(floor),
            "floor_min_s": min(floor), "imports_s": statistics.median(imports),
            "interpreter_s": statistics.median(bare), "openssh_parallel_s": statistics.median(ssh),
            "load_average": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.registry, args.runs), indent=2))


if __name__ == "__main__":
    main()
