#!/usr/bin/python3 -IS
"""Node-side helper of the deploy (stdlib only; installed as /opt/fleet/bin/fleet-nodectl).

Subcommands, each printing one JSON document:

- ``switch RELEASE``: point ``/opt/fleet/current`` at a release atomically, record it in history
- ``prune --keep N``: remove all but the newest N releases (never the current one)
- ``verify ...``: poll the gateway's /health until it shows the expected release, config and
  soul, then make sure the unit stays up (no restart, still healthy) for ``STABLE_S`` seconds
  after it started, so a crash right after its first good answer fails; with ``--rollback`` a
  failure switches back to the previous release, restarts and re-verifies it
- ``rollback [--to RELEASE]``: switch to RELEASE (default: the previous one), restart, verify
- ``facts ...``: what the audit phase records (release, hashes, unit, ports, keys, sudoers)

Agent state dirs are never touched here, nor is the deploy lock (the deploy releases it in
the same round trip: :mod:`deploys.lock`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("FLEET_OPT", "/opt/fleet"))
RELEASES = ROOT / "releases"
CURRENT = ROOT / "current"
HISTORY = ROOT / "history"
# A release id, matched in full: ``<sha12>``, ``<sha12>-dirty-<hash8>`` or ``nogit-<hash12>``,
# each with an optional ``-broken`` (see fleet/release.py). Nothing else reaches a path here.
RELEASE_ID_RE = re.compile(r"(?:[0-9a-f]{12}(?:-dirty-[0-9a-f]{8})?|nogit-[0-9a-f]{12})"
                           r"(?:-broken)?")
RELEASE_ID_FORM = ("12 hex digits, optionally -dirty-<8 hex digits>, or nogit-<12 hex digits>; "
                   "then optionally -broken")


def release_id(value: str) -> str:
    """``value`` if it is a release id (argparse type); refuses paths like ``../x``."""
    if not RELEASE_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a release id ({RELEASE_ID_FORM})")
    return value


def current_release() -> str | None:
    """The release ``current`` points at, or None."""
    try:
        return Path(os.readlink(CURRENT)).name
    except OSError:
        return None


def history() -> list[str]:
    """Releases in the order they were switched to (oldest first)."""
    try:
        return HISTORY.read_text().split()
    except OSError:
        return []


def previous_release() -> str | None:
    """The release that was current before the current one and is still on disk."""
    now = current_release()
    for release in reversed(history()):
        if (release != now and RELEASE_ID_RE.fullmatch(release)
                and (RELEASES / release / "site").is_dir()):
            return release
    return None


def switch(release: str) -> dict[str, Any]:
    """Point ``current`` at ``release`` (symlink + rename) and append it to the history."""
    if not RELEASE_ID_RE.fullmatch(release):
        raise SystemExit(f"{release!r} is not a release id ({RELEASE_ID_FORM})")
    if not (RELEASES / release / "site").is_dir():
        raise SystemExit(f"release {release} is not installed under {RELEASES}")
    before = current_release()
    if before != release:
        temp = ROOT / f".current.{os.getpid()}"
        temp.unlink(missing_ok=True)
        temp.symlink_to(Path("releases") / release)
        temp.rename(CURRENT)
        with HISTORY.open("a") as handle:
            handle.write(release + "\n")
    return {"release": release, "before": before, "changed": before != release}


def prune(keep: int) -> dict[str, Any]:
    """Delete releases beyond the newest ``keep`` (by last use), never the current one."""
    installed = [path.name for path in RELEASES.iterdir()
                 if path.is_dir() and not path.name.startswith(".")]
    order = {release: index for index, release in enumerate(history())}
    installed.sort(key=lambda name: (order.get(name, -1), name), reverse=True)
    now = current_release()
    kept = [name for name in installed if name == now][:1]
    kept += [name for name in installed if name != now][: max(keep - len(kept), 0)]
    removed = [name for name in installed if name not in kept]
    for name in removed:
        shutil.rmtree(RELEASES / name)
    for stale in RELEASES.glob(".unpack-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return {"kept": kept, "removed": removed}


def get_health(port: int, timeout: float = 2.0,
               roundtrip: bool = False) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, JSON body) of the local gateway's /health; status 0 when unreachable.
    ``roundtrip`` asks the gateway for a live model round trip too."""
    import urllib.error  # here: the controller imports this module for its constants
    import urllib.request

    url = f"http://127.0.0.1:{port}/health" + ("?roundtrip=1" if roundtrip else "")
    timeout = max(timeout, 15.0) if roundtrip else timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return 0, None


def health_problems(status: int, body: dict[str, Any] | None, expect: dict[str, str]) -> list[str]:
    """Why this health answer is not the expected one (empty list: all good)."""
    if status == 0 or body is None:
        return ["gateway not answering on /health"]
    problems = [str(problem) for problem in body.get("problems", [])]
    if status != 200 and not problems:
        problems.append(f"/health answered HTTP {status}")
    for key, wanted in expect.items():
        if wanted and body.get(key) != wanted:
            problems.append(f"{key} is {body.get(key)!r}, expected {wanted!r}")
    return problems


SETTLE_S = 3.0


def runtime_starting(body: dict[str, Any] | None) -> bool:
    """Whether /health shows an agent runtime that has not finished its first model round
    trip yet (it gets the whole timeout for that, not only ``SETTLE_S``)."""
    runtime = (body or {}).get("runtime") or {}
    return runtime.get("kind") not in (None, "none") and runtime.get("state") in (None,
                                                                                  "starting")


def wait_healthy(port: int, expect: dict[str, str], timeout: float,
                 roundtrip: bool = False) -> tuple[list[str], Any]:
    """Poll /health until it matches ``expect`` or ``timeout`` passes; (problems, last body).

    A gateway that already runs the expected release but reports problems gets ``SETTLE_S``
    seconds to recover, not the whole timeout (unless its runtime is still starting)."""
    started = time.monotonic()
    deadline = started + timeout
    running_since: float | None = None
    while True:
        status, body = get_health(port, roundtrip=roundtrip)
        problems = health_problems(status, body, expect)
        now = time.monotonic()
        if body is not None and body.get("release") == expect.get("release") \
                and not runtime_starting(body):
            running_since = running_since or now
        settled = running_since is not None and now - running_since >= SETTLE_S
        if not problems or now >= deadline or settled:
            return problems, body
        time.sleep(0.2)


def restart(unit: str) -> None:
    """Restart the agent's unit (raises on failure)."""
    subprocess.run(["systemctl", "restart", unit], check=True, capture_output=True)


def rollback(unit: str, port: int, to: str | None, timeout: float) -> dict[str, Any]:
    """Switch to ``to`` (default: previous release), restart and verify the result."""
    target = to or previous_release()
    if target is None:
        return {"rolled_back": False, "reason": "no previous release on the node"}
    switched = switch(target)
    restart(unit)
    problems, body = wait_healthy(port, {"release": target}, timeout)
    if not problems:
        problems = stayed_up(unit, port, {"release": target})
    return {"rolled_back": True, "release": target, "from": switched["before"],
            "healthy": not problems, "problems": problems, "health": body}


STABLE_S = 3.0  # a unit must stay up this long after it (re)started to pass verify


def monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds (systemd's ``...TimestampMonotonic`` clock)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def stayed_up(unit: str, port: int, expect: dict[str, str],
              runtime_unit: str | None = None) -> list[str]:
    """Why the unit did not stay healthy for ``STABLE_S`` seconds after it became active: a
    crash right after its first good answer restarts it (or leaves it down) and fails verify.
    A unit that has been up longer already is checked at once (no wait)."""
    first = unit_state(unit)
    try:
        up_for = (monotonic_us() - int(first.get("ActiveEnterTimestampMonotonic") or 0)) / 1e6
    except ValueError:
        up_for = 0.0
    waited = up_for < STABLE_S
    if waited:
        time.sleep(STABLE_S - up_for)
    now = unit_state(unit) if waited else first
    problems = []
    if now.get("ActiveState") != "active":
        problems.append(f"{unit} is {now.get('ActiveState')}/{now.get('SubState')} "
                        f"{STABLE_S:g} s after it started: it fails after start")
    elif (now.get("MainPID"), now.get("NRestarts")) != (first.get("MainPID"),
                                                        first.get("NRestarts")):
        problems.append(f"{unit} restarted after it first answered /health (restarts "
                        f"{first.get('NRestarts')} -> {now.get('NRestarts')}): it crashes "
                        "after start")
    if not problems and runtime_unit:
        runtime = unit_state(runtime_unit)
        if runtime.get("ActiveState") != "active":
            problems.append(f"{runtime_unit} is {runtime.get('ActiveState')}/"
                            f"{runtime.get('SubState')}: the agent's runtime is not running")
    if not problems and waited:  # else /health was just found good (wait_healthy)
        status, body = get_health(port, roundtrip=runtime_unit is not None)
        problems = health_problems(status, body, expect)
    return problems


def verify(args: argparse.Namespace) -> dict[str, Any]:
    """Check the deployed agent; on failure optionally roll back (see module docstring)."""
    expect = {"release": args.release, "config_hash": args.config_hash,
              "soul_sha256": args.soul_sha}
    problems, body = wait_healthy(args.port, expect, args.timeout,
                                  roundtrip=bool(args.runtime_unit))
    if not problems:
        problems = stayed_up(args.unit, args.port, expect, args.runtime_unit)
    result: dict[str, Any] = {"ok": not problems, "problems": problems, "health": body,
                              "release": args.release}
    if problems and args.rollback:
        result["rollback"] = rollback(args.unit, args.port, None, args.timeout)
    return result


def fingerprint(line: str) -> str | None:
    """OpenSSH SHA256 fingerprint of an authorized_keys line, or None if it has no key."""
    for part in line.split():
        try:
            blob = base64.b64decode(part, validate=True)
        except ValueError:
            continue
        if len(blob) > 20 and blob[4:8] in (b"ssh-", b"ecds", b"sk-s", b"sk-e"):
            digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
            return f"SHA256:{digest}"
    return None


def listening_ports() -> list[int]:
    """TCP ports in LISTEN state (from /proc/net/tcp and tcp6)."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def sudoers() -> list[str]:
    """Effective lines of /etc/sudoers and /etc/sudoers.d/*, prefixed with their file."""
    files = [Path("/etc/sudoers"), *sorted(Path("/etc/sudoers.d").glob("*"))]
    lines = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            stripped = line.strip()
            if stripped and (not stripped.startswith("#") or stripped.startswith("#include")):
                lines.append(f"{path.name}: {stripped}")
    return lines


def sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def file_info(path: Path) -> dict[str, Any] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    import grp
    import pwd

    def name(lookup: Any, ident: int) -> str:
        try:
            return str(lookup(ident)[0])
        except KeyError:
            return str(ident)

    return {"mode": f"{info.st_mode & 0o7777:04o}", "user": name(pwd.getpwuid, info.st_uid),
            "group": name(grp.getgrgid, info.st_gid)}


def unit_state(unit: str) -> dict[str, str]:
    keys = ["ActiveState", "SubState", "UnitFileState", "MainPID", "ActiveEnterTimestamp",
            "ActiveEnterTimestampMonotonic", "NRestarts"]
    done = subprocess.run(["systemctl", "show", unit, "-p", ",".join(keys)],
                          capture_output=True, text=True, check=False)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def facts(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the audit phase records about one agent on this node."""
    etc = Path("/etc/fleet") / args.agent
    home = Path(os.path.expanduser(f"~{args.login_user}"))
    keys_file = home / ".ssh" / "authorized_keys"
    try:
        key_lines = keys_file.read_text().splitlines()
    except OSError:
        key_lines = []
    status, body = get_health(args.port)
    return {
        "release": current_release(),
        "releases": sorted(p.name for p in RELEASES.iterdir() if p.is_dir()
                           and not p.name.startswith(".")) if RELEASES.is_dir() else [],
        "soul_sha256": sha256_of(etc / "soul.md"),
        "config_hash": sha256_of(etc / "config.json"),
        "files": {str(path): file_info(path) for path in (
            etc / "soul.md", etc / "env", etc / "config.json", etc,
            Path("/var/lib/fleet") / args.agent)},
        "unit": unit_state(args.unit),
        "ports": listening_ports(),
        "authorized_keys": [fp for fp in map(fingerprint, key_lines) if fp],
        "sudoers": sudoers(),
        "health_status": status,
        "health": body,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-nodectl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    switch_cmd = commands.add_parser("switch", help="point current at a release")
    switch_cmd.add_argument("release", type=release_id)
    prune_cmd = commands.add_parser("prune", help="keep only the newest releases")
    prune_cmd.add_argument("--keep", type=int, default=5)
    for name in ("verify", "rollback", "facts"):
        sub = commands.add_parser(name, help=f"{name} one agent")
        sub.add_argument("--unit", required=True)
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--timeout", type=float, default=20.0)
        if name == "verify":
            sub.add_argument("--release", required=True, type=release_id)
            sub.add_argument("--config-hash", default="")
            sub.add_argument("--soul-sha", default="")
            sub.add_argument("--rollback", action="store_true")
            sub.add_argument("--runtime-unit", default=None,
                             help="the agent's runtime unit: it must run, and a live model "
                                  "round trip must succeed")
        elif name == "rollback":
            sub.add_argument("--to", type=release_id)
        else:
            sub.add_argument("--agent", required=True)
            sub.add_argument("--login-user", default="root")
        if name != "facts":
            sub.add_argument("--agent", help="also report the audit facts of this agent")
            sub.add_argument("--login-user", default="root")
    args = parser.parse_args(argv)
    if args.command == "switch":
        result = switch(args.release)
    elif args.command == "prune":
        result = prune(args.keep)
    elif args.command == "facts":
        result = facts(args)
    else:
        if args.command == "verify":
            result = verify(args)
        else:
            result = rollback(args.unit, args.port, args.to, args.timeout)
        if args.agent:
            result["facts"] = facts(args)
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
