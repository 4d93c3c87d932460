"""Helpers the benchmarks share: one percentile; loopback servers (a free port, their bus keys,
waiting until they answer); for the deploy benchmarks a clean clone to deploy from, the
``fleet`` command run from it, and child processes timed with their own CPU time and peak
memory."""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from bus.keys import PRIVATE_KEY_ENV, PUBLIC_KEYS_ENV, format_keyring, keyring_of

REPO = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` 0.99: p99): the smallest value with
    at least that share of ``values`` at or below it. Every bench reports with this one (the
    README's ``bench/slow_clients.py`` figures were measured with it)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def keys_env(keys: Mapping[str, str], agent: str) -> dict[str, str]:
    """The bus key environment of ``agent``'s gateway: everyone's public keys from ``keys``
    (agent name to private key) and ``agent``'s own private key."""
    return {PUBLIC_KEYS_ENV: format_keyring(keyring_of(keys.items())),
            PRIVATE_KEY_ENV: keys[agent]}


def http_answers(url: str, timeout: float) -> bool:
    """Whether a GET of ``url`` is answered at all (any status) within ``timeout`` seconds."""
    try:
        with requests.get(url, timeout=timeout):
            return True
    except requests.RequestException:  # not listening yet, or slow on a loaded machine
        return False


def wait_serving(process: subprocess.Popen[bytes], answers: Callable[[], bool],
                 name: str, log: Path | None = None, timeout: float = 60) -> None:
    """Return once ``answers()`` is true (asked every 50 ms): the server ``process`` started;
    :class:`SystemExit` naming ``name`` (and its ``log``) if it exits or ``timeout`` seconds
    pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start" + (f"; see {log}" if log else ""))
        if answers():
            return
        time.sleep(0.05)


QUIET_BUSY = 0.25
"""A machine is quiet when its CPUs were busy at most this share of each of two seconds."""


def busy_share(seconds: float = 1.0) -> float:
    """The share of CPU time the whole machine spent busy over the next ``seconds``."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # all, idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    spent = total_after - total
    return 1.0 - (idle_after - idle) / spent if spent else 0.0


def settle(limit: float = 180.0) -> tuple[float, float]:
    """Wait until the machine is quiet (:data:`QUIET_BUSY`) or ``limit`` seconds passed: a lab
    whose agents just started keeps the 2 cores busy for a while, and a run timed then
    measures them, not the tool. (Seconds waited, busy share of the last second.)"""
    started = time.monotonic()
    quiet = 0
    share = busy_share()
    while time.monotonic() - started < limit:
        quiet = quiet + 1 if share <= QUIET_BUSY else 0
        if quiet >= 2:
            break
        share = busy_share()
    return round(time.monotonic() - started, 1), round(share, 2)


def cpu_of_children() -> float:
    """User + sys seconds of all waited-for child processes (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def clone(rev: str = "HEAD") -> tuple[tempfile.TemporaryDirectory[str], Path]:
    """A clean clone of this repository at ``rev`` (edits in the work tree, ours or another
    session's, cannot change the release midway); the scratch dir owning it and its path."""
    scratch = tempfile.TemporaryDirectory(prefix="fleet-bench-")
    path = Path(scratch.name) / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "checkout", "-q", rev], check=True)
    return scratch, path


def fleet_command(*args: str) -> list[str]:
    """The ``fleet`` CLI with this interpreter (the project's venv), taking ``fleet`` from
    ``$PYTHONPATH`` (see :func:`fleet_env`)."""
    return [sys.executable, "-c", "from fleet.cli import main; main()", *args]


def fleet_env(checkout: Path, registry: Path) -> dict[str, str]:
    """Environment running ``fleet`` from ``checkout`` against the lab ``registry``."""
    env = {**os.environ, "FLEET_REGISTRY": str(registry), "PYTHONPATH": str(checkout),
           "FLEET_RECORDS_DIR": str(checkout / "records")}
    for name in ("FLEET_RELEASE_ID", "FLEET_RELEASE_ARTIFACT", "FLEET_RUN_ID",
                 "FLEET_BROKEN_RELEASE", "FLEET_SECRETS"):
        env.pop(name, None)
    return env


def stock_python(env: dict[str, str]) -> dict[str, str]:
    """``env`` with Python's defaults where a machine's environment may change them for
    every process: bytecode caching on (``PYTHONDONTWRITEBYTECODE`` unset), as an operator's
    machine has it, so a tool's second run does not compile its sources again."""
    return {name: value for name, value in env.items() if name != "PYTHONDONTWRITEBYTECODE"}


@dataclass(frozen=True)
class Measured:
    """One timed child process: wall seconds, CPU seconds (user + sys, with every descendant
    it waited for), its largest resident set (MiB, of the biggest process in its tree), exit
    code, and the log holding its output."""

    wall: float
    cpu: float
    max_rss_mib: float
    returncode: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def run_measured(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> Measured:
    """Run ``command`` with stdout and stderr to ``log``; its rusage comes from ``wait4`` on
    it alone (``RUSAGE_CHILDREN``'s ru_maxrss never goes down, so it cannot be split per run)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(wall=wall, cpu=usage.ru_utime + usage.ru_stime,
                    max_rss_mib=usage.ru_maxrss / 1024, returncode=process.returncode, log=log)


STATUS_ATTEMPTS = 3


def status_problems(checkout: Path, env: dict[str, str], release: str) -> list[str]:
    """Agents ``fleet status`` does not show ok on ``release`` (soul and config as wanted)."""
    status = subprocess.run(fleet_command("status", "--json"), cwd=checkout, env=env,
                            capture_output=True, text=True, check=False)
    try:
        agents = json.loads(status.stdout)["agents"]
    except (ValueError, KeyError):
        return [f"fleet status gave no JSON (exit {status.returncode}): {status.stderr[-500:]}"]
    return [f"fleet status: {agent['agent']} is {agent['state']} on release {agent['release']} "
            f"(ssh {agent.get('ssh')}, health {agent.get('health')}: "
            f"{'; '.join(agent['problems'] + agent['drift'])})"
            for agent in agents if agent["state"] != "ok" or agent["release"] != release]


def equivalence_problems(checkout: Path, registry: Path, release: str,
                         live: bool = True) -> list[str]:
    """Why the lab fleet is not as our deploy leaves it: ``fleet status`` must show every agent
    ok on ``release`` with the soul and config hashes the registry wants, ``fleet drift`` (our
    deploy's dry run) must find nothing to change, and with ``live`` the ``tests/live`` suite
    (``fleet test``) must pass. Empty when equivalent."""
    env = fleet_env(checkout, registry)
    for attempt in range(STATUS_ATTEMPTS):  # a loaded 2-core box can time a probe out
        problems = status_problems(checkout, env, release)
        if not problems:
            break
        time.sleep(10 * (attempt + 1))
    checks = [("drift", ["drift"])] + ([("test", ["test"])] if live else [])
    for name, args in checks:
        done = subprocess.run(fleet_command(*args), cwd=checkout, env=env, capture_output=True,
                              text=True, check=False, timeout=900)
        if done.returncode != 0:
            problems.append(f"fleet {name} failed (exit {done.returncode}): "
                            f"{(done.stdout + done.stderr)[-1500:]}")
    return problems
