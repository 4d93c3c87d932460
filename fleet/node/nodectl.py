#!/usr/bin/python3 -IS
"""Node-side helper of the deploy (stdlib only; installed as /opt/fleet/bin/fleet-nodectl).

Subcommands, each printing one JSON document:

- ``switch RELEASE``: point ``/opt/fleet/current`` at a release atomically, record it in history
- ``prune --keep N``: remove all but the newest N releases (never the current one)
- ``verify ...``: poll the gateway's /health until it shows the expected release, config and
  soul (and a runtime that keeps the runtime contract: fresh heartbeat, ``ready``), then make
  sure the agent's units (gateway and runtime) stayed up across their stability window
  (``STABLE_S``, ``RUNTIME_STABLE_S``): active, with the activation time, restart count and
  main process ``systemctl show`` gave when verify began, so a unit that crashes and is
  restarted fails however its restarts fall; with ``--rollback`` a failure switches back to
  the previous release, restarts and re-verifies it
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(os.environ.get("FLEET_OPT", "/opt/fleet"))
RELEASES = ROOT / "releases"
CURRENT = ROOT / "current"
HISTORY = ROOT / "history"
# A release id, matched in full: ``<sha12>``, ``<sha12>-dirty-<hash8>`` or ``nogit-<hash12>``,
# each with an optional ``-broken`` or ``-broken-exit`` (see fleet/control/release.py). Nothing else
# reaches a path here.
RELEASE_ID_RE = re.compile(r"(?:[0-9a-f]{12}(?:-dirty-[0-9a-f]{8})?|nogit-[0-9a-f]{12})"
                           r"(?:-broken(?:-exit)?)?")
RELEASE_ID_FORM = ("12 hex digits, optionally -dirty-<8 hex digits>, or nogit-<12 hex digits>; "
                   "then optionally -broken or -broken-exit")


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


def sync_dir(path: Path) -> None:
    """fsync a folder, so the renames in it are on disk (this script is stdlib only and runs
    isolated: :mod:`fleet.core.atomic` is the controller's same rule)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Switched(TypedDict):
    """``fleet-nodectl switch``: the release now current, the one before, whether it moved."""

    release: str
    before: str | None
    changed: bool


class Pruned(TypedDict):
    """``fleet-nodectl prune``: the releases kept and removed."""

    kept: list[str]
    removed: list[str]


class FileFacts(TypedDict):
    """A managed path's mode (``0640``), owner and group names."""

    mode: str
    user: str
    group: str


class AgentFacts(TypedDict):
    """``fleet-nodectl facts``: everything the audit records about one agent on its node."""

    release: str | None
    releases: list[str]
    soul_sha256: str | None
    config_hash: str | None
    files: dict[str, FileFacts | None]  # None: missing
    unit: dict[str, str]  # ``systemctl show`` properties (:data:`UNIT_KEYS`)
    ports: list[int]  # listening TCP ports
    authorized_keys: list[str]  # fingerprints in the login user's authorized_keys
    sudoers: list[str]
    health_status: int  # 0: no answer
    health: dict[str, Any] | None  # the gateway's /health body


def unknown_agent() -> AgentFacts:
    """The facts of an agent nothing could be read of (``fleet-nodectl`` gave no answer)."""
    return {"release": None, "releases": [], "soul_sha256": None, "config_hash": None,
            "files": {}, "unit": {}, "ports": [], "authorized_keys": [], "sudoers": [],
            "health_status": 0, "health": None}


# ``fleet-nodectl rollback`` (or verify's automatic one): whether it rolled back (else the
# reason), the release it went back to and the one it left ("from": a keyword, hence this
# form), whether the environment was restored, health after the restart, and with ``--agent``
# the agent's facts.
RollbackOutcome = TypedDict("RollbackOutcome", {
    "rolled_back": bool, "reason": str, "release": str, "from": str | None,
    "env_restored": bool, "restarted": bool, "healthy": bool, "problems": list[str],
    "health": Any, "facts": AgentFacts}, total=False)


class VerifyOutcome(TypedDict, total=False):
    """``fleet-nodectl verify``: health as expected, else the problems and the rollback."""

    ok: bool
    problems: list[str]
    health: Any
    release: str
    rollback: RollbackOutcome
    facts: AgentFacts  # with ``--agent``


def switch(release: str) -> Switched:
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
            handle.flush()
            os.fsync(handle.fileno())
        sync_dir(ROOT)  # the switch survives a power cut once it is reported
    return {"release": release, "before": before, "changed": before != release}


def prune(keep: int) -> Pruned:
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
POLL_S = 0.2


def runtime_starting(body: dict[str, Any] | None) -> bool:
    """Whether /health shows an agent runtime that has not finished starting yet: no state
    file, or still the file of the process before the restart (``stopped``, or its process
    gone), ``starting``, or up for less than its stability window (it gets the whole timeout
    for that, not only ``SETTLE_S``; a runtime that crashes meanwhile is caught by the unit
    watch of :func:`verify`)."""
    runtime = (body or {}).get("runtime") or {}
    if runtime.get("kind") in (None, "none"):
        return False
    up = runtime.get("up_s")
    return (runtime.get("state") in (None, "starting", "stopped")
            or runtime.get("alive") is False
            or (isinstance(up, int | float) and up < RUNTIME_STABLE_S))


def wait_healthy(port: int, expect: dict[str, str], timeout: float, roundtrip: bool = False,
                 watch: Callable[[], list[str]] | None = None) -> tuple[list[str], Any]:
    """Poll /health until it matches ``expect`` or ``timeout`` passes; (problems, last body).

    A gateway that already runs the expected release but reports problems gets ``SETTLE_S``
    seconds to recover, not the whole timeout (unless its runtime is still starting).
    ``watch`` (the agent's units) ends the wait at once when it finds a problem: a unit that
    crashed does not get the rest of the timeout."""
    started = monotonic()
    deadline = started + timeout
    running_since: float | None = None
    while True:
        crashed = watch() if watch else []
        if crashed:  # with what /health says about it (a runtime's state names its error)
            status, body = get_health(port)
            said = [str(problem) for problem in (body or {}).get("problems", [])]
            return crashed + [problem for problem in said if problem not in crashed], body
        status, body = get_health(port, roundtrip=roundtrip)
        problems = health_problems(status, body, expect)
        now = monotonic()
        if runtime_starting(body):
            running_since = None  # the settling time counts from a started runtime
        elif body is not None and body.get("release") == expect.get("release"):
            running_since = running_since or now
        settled = running_since is not None and now - running_since >= SETTLE_S
        if not problems or now >= deadline or settled:
            return problems, body
        sleep(POLL_S)


def restart(unit: str) -> None:
    """Restart the agent's unit (raises on failure)."""
    subprocess.run(["systemctl", "restart", unit], check=True, capture_output=True)


ETC = Path("/etc/fleet")


def restore_env(agent: str | None) -> bool:
    """Put back the agent's environment the deploy replaced (``env.previous``, kept by the
    keys phase); False when there is none."""
    if not agent:
        return False
    previous = ETC / agent / "env.previous"
    if not previous.is_file():
        return False
    os.replace(previous, ETC / agent / "env")
    sync_dir(ETC / agent)
    return True


def rollback(unit: str, port: int, to: str | None, timeout: float,
             runtime_unit: str | None = None, env_of: str | None = None) -> RollbackOutcome:
    """Switch to ``to`` (default: previous release), restart and verify the result. With
    ``env_of`` (an agent whose environment this deploy changed) its previous environment is
    restored too, and the current release restarted with it when there is no previous one."""
    target = to or previous_release()
    env_restored = restore_env(env_of)
    target = target or (current_release() if env_restored else None)
    if target is None:
        return {"rolled_back": False, "reason": "no previous release on the node"}
    switched = switch(target)
    restart(unit)
    problems, body = checked(unit, runtime_unit, port, {"release": target}, timeout)
    return {"rolled_back": True, "release": target, "from": switched["before"],
            "env_restored": env_restored, "restarted": True,
            "healthy": not problems, "problems": problems, "health": body}


STABLE_S = 3.0  # a unit must stay up this long after it (re)started to pass verify
RUNTIME_STABLE_S = 5.0
"""A runtime unit must stay up this long (``fleet.node.runtime.state.STABLE_S``: /health counts a
runtime only once its process has been up as long)."""
UNIT_KEYS = ("ActiveState", "SubState", "UnitFileState", "MainPID", "ActiveEnterTimestamp",
             "ActiveEnterTimestampMonotonic", "NRestarts", "Result", "ExecMainStatus")


def monotonic_us() -> int:
    """CLOCK_MONOTONIC in microseconds (systemd's ``...TimestampMonotonic`` clock)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def monotonic() -> float:
    """CLOCK_MONOTONIC in seconds (the same clock as :func:`monotonic_us`)."""
    return monotonic_us() / 1e6


def sleep(seconds: float) -> None:
    """Wait (a module function, so tests can give verify a clock of their own)."""
    time.sleep(seconds)


def unit_problems(unit: str, before: dict[str, str], now: dict[str, str]) -> list[str]:
    """Why ``unit`` did not stay up from snapshot ``before`` to snapshot ``now`` (both from
    :func:`unit_state`): not active now, or restarted in between (another activation time,
    restart count or main process)."""
    if now.get("ActiveState") != "active":
        return [f"{unit} is {now.get('ActiveState')}/{now.get('SubState')} (result "
                f"{now.get('Result') or '?'}, exit status {now.get('ExecMainStatus') or '?'}, "
                f"restarts {now.get('NRestarts') or '0'}): it does not stay up"]
    moved = [key for key in ("ActiveEnterTimestamp", "NRestarts", "MainPID")
             if before.get(key) != now.get(key)]
    if moved:
        return [f"{unit} restarted during verify (restarts {before.get('NRestarts') or '0'} "
                f"-> {now.get('NRestarts') or '0'}, active since "
                f"{now.get('ActiveEnterTimestamp') or '?'}): it crashes after start"]
    return []


def up_for(state: dict[str, str]) -> float:
    """Seconds since the unit last became active (0 when unknown)."""
    try:
        entered = int(state.get("ActiveEnterTimestampMonotonic") or 0)
    except ValueError:
        return 0.0
    return (monotonic_us() - entered) / 1e6 if entered else 0.0


def stayed_up(port: int, expect: dict[str, str], first: dict[str, dict[str, str]],
              roundtrip: bool = False) -> list[str]:
    """Why the units did not stay up across their stability window: each must have been
    active ``STABLE_S`` seconds (a runtime unit ``RUNTIME_STABLE_S``) since it last started,
    with the same activation time, restart count and main process as in ``first`` (taken
    when verify began), so a unit that crashes and is restarted fails however its restarts
    fall. Units up for longer are checked at once (no wait); after a wait /health is asked
    again."""
    waited = False
    for unit, before in first.items():
        window = RUNTIME_STABLE_S if unit.startswith("fleet-runtime-") else STABLE_S
        found = unit_problems(unit, before, unit_state(unit))
        if found:
            return found
        left = window - up_for(unit_state(unit))
        if left > 0:
            sleep(left)
            waited = True
    for unit, before in first.items():
        found = unit_problems(unit, before, unit_state(unit))
        if found:
            return found
    if waited:  # else /health was just found good (wait_healthy)
        status, body = get_health(port, roundtrip=roundtrip)
        return health_problems(status, body, expect)
    return []


def checked(unit: str, runtime_unit: str | None, port: int, expect: dict[str, str],
            timeout: float) -> tuple[list[str], Any]:
    """Wait for /health to show ``expect`` while watching the agent's units (the gateway and
    its runtime, if any), then make sure they stayed up: (problems, last /health body)."""
    units = [unit, *([runtime_unit] if runtime_unit else [])]
    first = {name: unit_state(name) for name in units}

    def watch() -> list[str]:
        return [problem for name in units
                for problem in unit_problems(name, first[name], unit_state(name))]

    problems, body = wait_healthy(port, expect, timeout, roundtrip=bool(runtime_unit),
                                  watch=watch)
    if not problems:
        problems = stayed_up(port, expect, first, roundtrip=bool(runtime_unit))
    return problems, body


def verify(args: argparse.Namespace) -> VerifyOutcome:
    """Check the deployed agent; on failure optionally roll back (see module docstring)."""
    expect = {"release": args.release, "config_hash": args.config_hash,
              "soul_sha256": args.soul_sha}
    problems, body = checked(args.unit, args.runtime_unit, args.port, expect, args.timeout)
    result: VerifyOutcome = {"ok": not problems, "problems": problems, "health": body,
                             "release": args.release}
    if problems and args.rollback:
        result["rollback"] = rollback(args.unit, args.port, None, args.timeout,
                                      args.runtime_unit,
                                      args.agent if args.restore_env else None)
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


def file_info(path: Path) -> FileFacts | None:
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
    """``systemctl show UNIT`` for :data:`UNIT_KEYS` (empty when systemctl cannot say)."""
    done = subprocess.run(["systemctl", "show", unit, "-p", ",".join(UNIT_KEYS)],
                          capture_output=True, text=True, check=False)
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def facts(args: argparse.Namespace) -> AgentFacts:
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
            sub.add_argument("--restore-env", action="store_true",
                             help="this deploy changed the agent's environment: a rollback "
                                  "restores the previous one (env.previous) too")
            sub.add_argument("--runtime-unit", default=None,
                             help="the agent's runtime unit: it must run, and a live model "
                                  "round trip must succeed")
        elif name == "rollback":
            sub.add_argument("--to", type=release_id)
            sub.add_argument("--runtime-unit", default=None,
                             help="the agent's runtime unit: it must stay up too")
        else:
            sub.add_argument("--agent", required=True)
            sub.add_argument("--login-user", default="root")
        if name != "facts":
            sub.add_argument("--agent", help="also report the audit facts of this agent")
            sub.add_argument("--login-user", default="root")
    args = parser.parse_args(argv)
    result: Switched | Pruned | AgentFacts | VerifyOutcome | RollbackOutcome
    if args.command == "switch":
        result = switch(args.release)
    elif args.command == "prune":
        result = prune(args.keep)
    elif args.command == "facts":
        result = facts(args)
    else:
        checked_agent = (verify(args) if args.command == "verify" else
                         rollback(args.unit, args.port, args.to, args.timeout, args.runtime_unit))
        if args.agent:
            checked_agent["facts"] = facts(args)
        result = checked_agent
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
