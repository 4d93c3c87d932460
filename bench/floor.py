"""The floor of a no-change deploy on this machine: what no deploy tool written in Python on
pyinfra can go below. One process that starts the interpreter, imports pyinfra's CLI (as every
pyinfra run does), opens one SSH connection per host in parallel with pyinfra's transport
(paramiko, the lab's key and pinned host keys, the deploy's socket options: no Nagle stall, as
:mod:`fleet.control.sshsocket` sets them through pyinfra's host data) and runs one command on
each.

    python bench/floor.py REGISTRY [--runs 5] [--release TARBALL]

Also reported apart: the interpreter with the imports alone, and OpenSSH's ``ssh HOST true``
to every host in parallel (no connection sharing).

With ``--release``, also the **equal-work minimum** of a cold deploy: the floor, plus each
rollout stage's stability window (verify's ``STABLE_S``, or ``RUNTIME_STABLE_S`` when an agent
of the stage runs a runtime; the stages as ``fleet deploy`` plans them), plus moving the
release to the hosts: the tarball sent over the open connections to every host at once and
unpacked there (into a scratch folder, removed after). Any tool that keeps the canary first
and the same verify pays at least that.
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
# Both scripts below: the imports, then a paramiko connection per host (the lab's key, the
# pinned host keys, the deploy's socket options), as pyinfra's SSH connector opens it.
CONNECT = IMPORTS + """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import paramiko
from fleet.control.sshsocket import transport_factory
def connect(t):
    client = paramiko.SSHClient()
    client.load_host_keys(t["known_hosts"])
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(t["host"], port=t["port"], username=t["user"], key_filename=t["key"],
                   look_for_keys=False, allow_agent=False, timeout=30,
                   transport_factory=transport_factory)
    return client
def run(client, command):
    _, out, _ = client.exec_command(command)
    assert out.channel.recv_exit_status() == 0, command
"""
# Run in a fresh interpreter: imports, then one connection and round trip per host.
PROBE = CONNECT + """
targets = json.loads(sys.argv[1])
def probe(t):
    client = connect(t)
    run(client, "true")
    client.close()
with ThreadPoolExecutor(len(targets)) as pool:
    list(pool.map(probe, targets))
"""


# After the connections are open: send TARBALL to each host and unpack it, all at once; prints
# the seconds that took.
TRANSFER = CONNECT + """
targets, tarball = json.loads(sys.argv[1]), sys.argv[2]
def move(client):
    _, out, _ = client.exec_command("mktemp -d /var/tmp/fleet-floor.XXXXXX")
    scratch = out.read().decode().strip()
    assert out.channel.recv_exit_status() == 0 and scratch.startswith("/var/tmp/fleet-floor.")
    sftp = client.open_sftp()
    sftp.put(tarball, scratch + "/release.tar.gz")
    sftp.close()
    run(client, f"mkdir {scratch}/site && tar -xzf {scratch}/release.tar.gz -C {scratch}/site")
    return scratch
with ThreadPoolExecutor(len(targets)) as pool:
    clients = list(pool.map(connect, targets))
    started = time.perf_counter()
    scratches = list(pool.map(move, clients))
    print(time.perf_counter() - started)
    list(pool.map(lambda pair: run(pair[0], f"rm -rf {pair[1]}"), zip(clients, scratches)))
"""


def stage_windows(registry_path: Path) -> list[float]:
    """The stability window verify waits out in each rollout stage of a whole-fleet deploy
    (:func:`fleet.control.rollout.plan_waves`, default batch)."""
    from fleet.control.rollout import plan_waves
    from fleet.core.registry import load_registry
    from fleet.node.nodectl import RUNTIME_STABLE_S, STABLE_S

    registry = load_registry(registry_path)
    waves = plan_waves(registry, list(registry.agents), None)
    return [max(RUNTIME_STABLE_S if registry.agents[name].runtime_unit else STABLE_S
                for name in hosts) for _, hosts in waves if hosts]


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


def transfer(hosts: list[dict[str, Any]], tarball: Path) -> float:
    """Seconds to send ``tarball`` to every host at once and unpack it there."""
    done = subprocess.run([sys.executable, "-c", TRANSFER, json.dumps(hosts), str(tarball)],
                          check=True, capture_output=True, text=True)
    return float(done.stdout.strip())


def measure(registry_path: Path, runs: int = 5, release: Path | None = None) -> dict[str, Any]:
    """Median seconds of: the floor (imports + parallel paramiko round trips), the imports
    alone, the bare interpreter, and parallel OpenSSH round trips; with ``release`` (its
    tarball), also the release transfer and the cold deploy's equal-work minimum."""
    hosts = targets(registry_path)
    python = sys.executable
    floor = [_timed([python, "-c", PROBE, json.dumps(hosts)]) for _ in range(runs)]
    imports = [_timed([python, "-c", IMPORTS]) for _ in range(runs)]
    bare = [_timed([python, "-c", "pass"]) for _ in range(runs)]
    ssh = [openssh_parallel(hosts) for _ in range(runs)]
    return {"hosts": len(hosts), "runs": runs, "floor_s": statistics.median(floor),
            "floor_min_s": min(floor), "imports_s": statistics.median(imports),
            "interpreter_s": statistics.median(bare), "openssh_parallel_s": statistics.median(ssh),
            "load_average": os.getloadavg()[0], **(minimum(registry_path, hosts, release,
                                                            statistics.median(floor), runs)
                                                    if release else {})}


def minimum(registry_path: Path, hosts: list[dict[str, Any]], release: Path, floor_s: float,
            runs: int) -> dict[str, Any]:
    """The equal-work minimum of a cold deploy and its parts."""
    windows = stage_windows(registry_path)
    moved = statistics.median(transfer(hosts, release) for _ in range(runs))
    return {"stage_windows_s": windows, "release_mb": round(release.stat().st_size / 1e6, 1),
            "transfer_s": moved, "minimum_s": floor_s + sum(windows) + moved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--release", type=Path, help="the release tarball: also measure the "
                        "equal-work minimum of a cold deploy")
    args = parser.parse_args()
    print(json.dumps(measure(args.registry, args.runs, args.release), indent=2))


if __name__ == "__main__":
    main()
