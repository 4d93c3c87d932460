#!/usr/bin/python3 -IS
"""Node-side helper of the deploy (stdlib only). Installed as the module
/opt/fleet/lib/fleet_nodectl.py, run by the launcher /opt/fleet/bin/fleet-nodectl
(:func:`fleet.control.render.nodectl_launcher`): as a module its compiled code is cached.

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
- ``rollback --with-state AGENT``: also put back the agent's state as the snapshot taken
  before the current release was deployed (refused, changing nothing, when there is none)
- ``facts ...``: what the audit phase records (release, hashes, unit, ports, keys, sudoers)
- ``state snapshot|list|restore|export|import --agent AGENT ...``: snapshots of an agent's
  state dir (``/var/lib/fleet/AGENT``) kept outside it (``/var/lib/fleet-snapshots/AGENT/ID``,
  root only): SQLite databases through the online backup API, other files copied; restore
  stops the agent, swaps a rebuilt state dir in, starts and verifies it
- ``state hand-over|resume|retire --agent AGENT ...`` (``fleet move``): stop the agent (its
  runtime, then its gateway: nothing is accepted or written after) and take its final
  snapshot; start it again and verify it (a move that failed); remove its units and its
  ``/etc/fleet/AGENT`` (config, soul, secrets), keeping its state dir and snapshots unless
  ``--purge``

An agent's state dir is only ever changed by ``state restore`` and ``rollback --with-state``;
the deploy lock is never touched here (the deploy releases it in the same round trip:
:mod:`deploys.lock`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

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


def rmtree(path: Path, ignore_errors: bool = False) -> None:
    """:func:`shutil.rmtree`, imported on first use: verify, which every deploy runs on every
    host, removes nothing."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


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
    "health": Any, "facts": AgentFacts, "state_restored": str}, total=False)


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
    """Delete releases beyond the newest ``keep`` (by last use), never the current one, and
    what an unpack cut short left (``.unpack-<id>`` and its uploaded ``.unpack-<id>.tar.gz``)."""
    installed = [path.name for path in RELEASES.iterdir()
                 if path.is_dir() and not path.name.startswith(".")]
    order = {release: index for index, release in enumerate(history())}
    installed.sort(key=lambda name: (order.get(name, -1), name), reverse=True)
    now = current_release()
    kept = [name for name in installed if name == now][:1]
    kept += [name for name in installed if name != now][: max(keep - len(kept), 0)]
    removed = [name for name in installed if name not in kept]
    for name in removed:
        rmtree(RELEASES / name)
    for stale in RELEASES.glob(".unpack-*"):  # an unpack cut short: its folder, its upload
        if stale.is_dir() and not stale.is_symlink():
            rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return {"kept": kept, "removed": removed}


HEALTH_MAX_BYTES = 1 << 20
"""The most of a /health answer read (headers and body); a longer one counts as no answer."""
STATUS_LINE_RE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")


def get_health(port: int, timeout: float = 2.0,
               roundtrip: bool = False) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, JSON body) of the local gateway's /health; status 0 when there is no
    answer (nothing listening, ``timeout`` seconds of silence, no HTTP status line, over
    :data:`HEALTH_MAX_BYTES`), body None when it is not JSON. ``roundtrip`` asks the gateway
    for a live model round trip too.

    One HTTP/1.0 GET on a socket, read to the end (an HTTP/1.0 answer has no chunked body and
    ends when the server closes): ``http.client`` would cost about 30 ms of imports (``ssl``,
    ``email``) on every verify of every node."""
    import socket  # here: the controller imports this module for its constants

    path = "/health" + ("?roundtrip=1" if roundtrip else "")
    timeout = max(timeout, 15.0) if roundtrip else timeout
    deadline = monotonic() + timeout
    answer = bytearray()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)  # an address, not a name: no getaddrinfo (and its
            sock.connect(("127.0.0.1", port))  # idna codec import)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n"
                         "Accept: application/json\r\n\r\n".encode())
            while len(answer) <= HEALTH_MAX_BYTES:
                sock.settimeout(max(deadline - monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except (OSError, OverflowError):  # OverflowError: connect() to a port out of 0-65535
        return 0, None
    head, blank, body = bytes(answer).partition(b"\r\n\r\n")
    status = STATUS_LINE_RE.fullmatch(head.split(b"\r\n", 1)[0])
    if not blank or not status or len(answer) > HEALTH_MAX_BYTES:
        return 0, None
    try:
        found = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested past the stack
        return int(status[1]), None
    return int(status[1]), found if isinstance(found, dict) else None


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
    first = True
    while True:  # the units are watched from the second look on: the caller just saw them
        crashed = watch() if watch and not first else []
        first = False
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
    systemctl("restart", unit)


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
             runtime_unit: str | None = None, env_of: str | None = None,
             with_state: str | None = None) -> RollbackOutcome:
    """Switch to ``to`` (default: previous release), restart and verify the result. With
    ``env_of`` (an agent whose environment this deploy changed) its previous environment is
    restored too, and the current release restarted with it when there is no previous one.
    With ``with_state`` (an agent) its state dir is put back as the snapshot taken before the
    current release was deployed, and its environment as kept with that snapshot; without
    such a snapshot nothing is changed."""
    target = to or previous_release()
    snapshot: Manifest | None = None
    env: bytes | None = None
    if with_state:
        now = current_release()
        snapshot = snapshot_before(with_state, now)
        if snapshot is None:
            return {"rolled_back": False,
                    "reason": f"no state snapshot of {with_state} was taken before release "
                              f"{now} was deployed (fleet state list {with_state}): nothing "
                              "rolled back"}
        if target is None:
            return {"rolled_back": False, "reason": "no previous release on the node"}
        try:  # a damaged snapshot is refused before anything changes
            check_files(SNAPSHOTS / with_state / snapshot["id"], snapshot,
                        "nothing rolled back")
            env = snapshot_env(SNAPSHOTS / with_state / snapshot["id"], snapshot)
        except SystemExit as exc:
            return {"rolled_back": False, "reason": str(exc.code)}
    env_restored = restore_env(env_of)
    target = target or (current_release() if env_restored else None)
    if target is None:
        return {"rolled_back": False, "reason": "no previous release on the node"}
    switched = switch(target)
    if snapshot is not None and with_state:
        lock = locked(with_state)
        try:
            stop_units(unit, runtime_unit)
            try:
                restore_state(with_state, snapshot["id"])
                if env is not None:
                    put_env(with_state, env)
                    env_restored = True
            finally:
                start_units(unit, runtime_unit)
        finally:
            os.close(lock)
    else:
        restart(unit)
    problems, body = checked(unit, runtime_unit, port, {"release": target}, timeout)
    outcome: RollbackOutcome = {
        "rolled_back": True, "release": target, "from": switched["before"],
        "env_restored": env_restored, "restarted": True, "healthy": not problems,
        "problems": problems, "health": body}
    if snapshot is not None:
        outcome["state_restored"] = snapshot["id"]
    return outcome


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


def activated_us(state: dict[str, str]) -> int:
    """When the unit last became active, on :func:`monotonic_us`'s clock (0 when unknown)."""
    try:
        return max(0, int(state.get("ActiveEnterTimestampMonotonic") or 0))
    except ValueError:
        return 0


def up_for(state: dict[str, str]) -> float:
    """Seconds since the unit last became active (0 when unknown)."""
    entered = activated_us(state)
    return (monotonic_us() - entered) / 1e6 if entered else 0.0


def stability_window(unit: str) -> float:
    """Seconds ``unit`` must stay up: ``RUNTIME_STABLE_S`` for a runtime unit, else
    ``STABLE_S``."""
    return RUNTIME_STABLE_S if unit.startswith("fleet-runtime-") else STABLE_S


class Looks:
    """What verify saw last: each unit's state and the /health answer (when it was good), so
    the audit facts that follow ask neither again."""

    def __init__(self) -> None:
        self.units: dict[str, dict[str, str]] = {}
        self.health: tuple[int, Any] | None = None

    def unit(self, unit: str) -> dict[str, str]:
        """``unit_state(unit)``, kept as the unit's last look."""
        self.units[unit] = unit_state(unit)
        return self.units[unit]


def stayed_up(port: int, expect: dict[str, str], first: dict[str, dict[str, str]],
              roundtrip: bool = False, looks: Looks | None = None) -> list[str]:
    """Why the units did not stay up across their stability window: each must have been
    active ``STABLE_S`` seconds (a runtime unit ``RUNTIME_STABLE_S``) since it last started,
    with the same activation time, restart count and main process as in ``first`` (taken
    when verify began), so a unit that crashes and is restarted fails however its restarts
    fall. Units up for longer are checked at once (no wait); after a wait /health is asked
    again. ``looks`` keeps the last look at each unit and the last good /health."""
    looks = looks or Looks()
    waited = False
    for unit, before in first.items():
        window = stability_window(unit)
        now = looks.unit(unit)  # one look per unit: its problems and how long it has been up
        found = unit_problems(unit, before, now)
        if found:
            return found
        left = window - up_for(now)
        if left > 0:
            sleep(left)
            waited = True
    if not waited:  # each was just seen up past its window, and /health just found good
        return []
    looks.health = None  # asked again below
    for unit, before in first.items():
        found = unit_problems(unit, before, looks.unit(unit))
        if found:
            return found
    status, body = get_health(port, roundtrip=roundtrip)
    problems = health_problems(status, body, expect)
    looks.health = None if problems else (status, body)
    return problems


def up_since_before(unit: str, state: dict[str, str], asked_us: int) -> bool:
    """Whether ``unit`` (one look, ``state``) is active and has been since at least its
    stability window before ``asked_us`` (the monotonic time /health was asked): then it
    stayed up, without a restart (which would move its activation time), from before that
    /health answer until this look."""
    entered = activated_us(state)
    return (not unit_problems(unit, state, state) and entered > 0
            and entered <= asked_us - int(stability_window(unit) * 1e6))


def checked(unit: str, runtime_unit: str | None, port: int, expect: dict[str, str],
            timeout: float, looks: Looks | None = None) -> tuple[list[str], Any]:
    """Wait for /health to show ``expect`` while watching the agent's units (the gateway and
    its runtime, if any), then make sure they stayed up: (problems, last /health body).
    An agent up long since (a no-change deploy) is done after one /health and one look at
    each unit (:func:`up_since_before`); else that look starts the watch.
    ``looks`` keeps what was seen last (see :class:`Looks`)."""
    looks = looks or Looks()
    units = [unit, *([runtime_unit] if runtime_unit else [])]
    asked = monotonic_us()
    status, body = get_health(port, roundtrip=bool(runtime_unit))
    if not health_problems(status, body, expect):  # /health good at once: one look each
        first = {name: looks.unit(name) for name in units}
        if all(up_since_before(name, state, asked) for name, state in first.items()):
            looks.health = (status, body)
            return [], body
    else:
        first = {name: unit_state(name) for name in units}

    def watch() -> list[str]:
        return [problem for name in units
                for problem in unit_problems(name, first[name], unit_state(name))]

    problems, body = wait_healthy(port, expect, timeout, roundtrip=bool(runtime_unit),
                                  watch=watch)
    if not problems:
        looks.health = (200, body)  # no problem: /health answered 200 with the expected body
        problems = stayed_up(port, expect, first, roundtrip=bool(runtime_unit), looks=looks)
    if problems:
        looks.health = None
    return problems, body


def verify(args: argparse.Namespace, looks: Looks | None = None) -> VerifyOutcome:
    """Check the deployed agent; on failure optionally roll back (see module docstring).
    ``looks`` keeps what was seen last, for the audit facts (none after a rollback)."""
    expect = {"release": args.release, "config_hash": args.config_hash,
              "soul_sha256": args.soul_sha}
    looks = looks or Looks()
    problems, body = checked(args.unit, args.runtime_unit, args.port, expect, args.timeout,
                             looks)
    result: VerifyOutcome = {"ok": not problems, "problems": problems, "health": body,
                             "release": args.release}
    if problems and args.rollback:
        looks.units.clear()
        looks.health = None
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


SOCK_DIAG_BY_FAMILY = 20  # <linux/sock_diag.h>: the netlink message type of a socket dump
NETLINK_SOCK_DIAG = 4
TCP_LISTEN = 10  # <netinet/tcp.h>: the state number (its bit selects listening sockets)


def diag_listening_ports() -> set[int]:
    """TCP ports in LISTEN state, asked of the kernel over netlink (``sock_diag``, the
    interface of ``ss``) for listening sockets only, IPv4 and IPv6; OSError when it cannot
    answer (a kernel without ``inet_diag``)."""
    import socket  # here: the controller imports this module for its constants
    import struct

    ports: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(5.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            # struct inet_diag_req_v2: family, protocol, extensions, pad, states, then
            # struct inet_diag_sockid (48 bytes), zero: every socket in those states
            request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0,
                                  1 << TCP_LISTEN) + bytes(48)
            sock.send(struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY,
                                  0x301, seq, 0) + request)  # NLM_F_REQUEST | NLM_F_DUMP
            while not read_diag_answer(sock.recv(1 << 16), seq, ports):
                pass
    return ports


def read_diag_answer(data: bytes, seq: int, ports: set[int]) -> bool:
    """Add the listening ports of one netlink datagram of a ``sock_diag`` dump to ``ports``;
    whether the dump ended in it (``NLMSG_DONE``). Raises OSError on a netlink error."""
    import struct

    offset = 0
    while offset + 16 <= len(data):
        length, kind, _, answered, _ = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            raise OSError("a malformed netlink answer")
        if answered == seq and kind == 3:  # NLMSG_DONE
            return True
        if answered == seq and kind == 2:  # NLMSG_ERROR: a negative errno first
            code = -struct.unpack_from("=i", data, offset + 16)[0] if length >= 20 else 0
            raise OSError(code, f"sock_diag answered error {code}")
        # struct inet_diag_msg: family, state, timer, retrans, then the source port
        if (answered == seq and kind == SOCK_DIAG_BY_FAMILY and length >= 16 + 6
                and data[offset + 17] == TCP_LISTEN):
            ports.add(struct.unpack_from(">H", data, offset + 20)[0])
        offset += (length + 3) & ~3
    return False


def proc_listening_ports() -> set[int]:
    """TCP ports in LISTEN state from /proc/net/tcp and tcp6 (which the kernel makes by
    walking every socket hash bucket of the machine: milliseconds, however few sockets)."""
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
    return ports


def listening_ports() -> list[int]:
    """TCP ports in LISTEN state: from ``sock_diag``, else from /proc/net/tcp{,6}."""
    try:
        return sorted(diag_listening_ports())
    except OSError:
        return sorted(proc_listening_ports())


def text_lines(path: Path) -> list[str]:
    """The lines of a file the node's admins write (``authorized_keys``, sudoers), bytes that
    are not UTF-8 read as U+FFFD (never a failed verify); none when it cannot be read or is no
    regular file (a FIFO with no writer would be waited on forever: opened without blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read()
    except OSError:
        return []
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").splitlines()


def sudoers(etc: Path = Path("/etc")) -> list[str]:
    """Effective lines of /etc/sudoers and /etc/sudoers.d/*, prefixed with their file."""
    files = [etc / "sudoers", *sorted((etc / "sudoers.d").glob("*"))]
    lines = []
    for path in files:
        name = path.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        for line in text_lines(path):
            stripped = line.strip()
            if stripped and (not stripped.startswith("#") or stripped.startswith("#include")):
                lines.append(f"{name}: {stripped}")
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


def output_of(argv: list[str]) -> str:
    """What ``argv`` prints on stdout (stdin and stderr /dev/null; "" when it cannot start).
    Started by ``os.posix_spawnp``: ``subprocess`` would add about 4 ms of imports to every
    verify of every node."""
    read, write = os.pipe()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
    except OSError:
        os.close(read)
        return ""
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as stream:
        out = stream.read()
    os.waitpid(pid, 0)
    return out.decode("utf-8", "replace")


def systemctl(*args: str, check: bool = True) -> None:
    """``systemctl ARGS``, its output dropped; with ``check``, raises CalledProcessError
    when it fails."""
    import subprocess  # here: verify's path spawns with output_of, without this import

    subprocess.run(["systemctl", *args], check=check, capture_output=True)


def unit_state(unit: str) -> dict[str, str]:
    """``systemctl show UNIT`` for :data:`UNIT_KEYS` (empty when systemctl cannot say)."""
    shown = output_of(["systemctl", "show", unit, "-p", ",".join(UNIT_KEYS)])
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def facts(args: argparse.Namespace, looks: Looks | None = None) -> AgentFacts:
    """Everything the audit phase records about one agent on this node; the unit's state and
    a good /health answer verify just saw (``looks``) are not asked again."""
    looks = looks or Looks()
    etc = Path("/etc/fleet") / args.agent
    home = Path(os.path.expanduser(f"~{args.login_user}"))
    key_lines = text_lines(home / ".ssh" / "authorized_keys")
    status, body = looks.health or get_health(args.port)
    return {
        "release": current_release(),
        "releases": sorted(p.name for p in RELEASES.iterdir() if p.is_dir()
                           and not p.name.startswith(".")) if RELEASES.is_dir() else [],
        "soul_sha256": sha256_of(etc / "soul.md"),
        "config_hash": sha256_of(etc / "config.json"),
        "files": {str(path): file_info(path) for path in (
            etc / "soul.md", etc / "env", etc / "config.json", etc,
            Path("/var/lib/fleet") / args.agent)},
        "unit": looks.units.get(args.unit) or unit_state(args.unit),
        "ports": listening_ports(),
        "authorized_keys": [fp for fp in map(fingerprint, key_lines) if fp],
        "sudoers": sudoers(),
        "health_status": status,
        "health": body,
    }


# --- Agent state: snapshots, restore, export and import -------------------------------------
# An agent's state dir (``/var/lib/fleet/AGENT``) is snapshotted into a root-only folder beside
# it (``/var/lib/fleet-snapshots/AGENT/ID/``: ``manifest.json`` and ``data/``), never inside it,
# so a restore cannot eat its own snapshots. Only what the agent's user could have put there is
# read, and never through a symlink: every file is opened relative to its folder's descriptor
# with O_NOFOLLOW; symlinks and special files are left out (listed in the manifest).

STATE_ROOT = Path(os.environ.get("FLEET_STATE_ROOT", "/var/lib/fleet"))
SNAPSHOTS = Path(os.environ.get("FLEET_SNAPSHOTS", "/var/lib/fleet-snapshots"))
UNIT_DIR = Path("/etc/systemd/system")
AGENT_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")  # fleet.core.registry.NAME_RE
AGENT_FORM = "1-31 characters of lowercase letters, digits and '-', starting with a letter"
SNAPSHOT_ID_RE = re.compile(r"[0-9]{8}T[0-9]{12}Z")
SNAPSHOT_ID_FORM = "YYYYMMDDTHHMMSS then 6 digits of microseconds and Z"
SQLITE_HEADER = b"SQLite format 3\0"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
KEEP_SNAPSHOTS = 5
MAX_KEEP = 1000
MANIFEST = "manifest.json"
CHUNK = 1 << 20


def agent_name(value: str) -> str:
    """``value`` if it is an agent name (argparse type); refuses paths, options, newlines."""
    if not AGENT_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an agent name ({AGENT_FORM})")
    return value


def keep_count(value: str) -> int:
    """A number of snapshots to keep (argparse type): 1 to 1000."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_KEEP:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of snapshots to keep "
                                         f"(1-{MAX_KEEP})")
    return number


def snapshot_id(value: str) -> str:
    """``value`` if it is a snapshot id (argparse type)."""
    if not SNAPSHOT_ID_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a snapshot id ({SNAPSHOT_ID_FORM})")
    return value


class SnapshotFile(TypedDict):
    """One entry of a snapshot's manifest: a folder or a file of the state dir (``.``: the
    state dir itself), its mode (``0640``), owner (name and number) and, for a file, size
    and sha256 of the copy (a SQLite database: of its online backup)."""

    path: str
    type: str  # "dir" or "file"
    mode: str
    user: str
    group: str
    uid: int
    gid: int
    size: int
    sha256: str
    sqlite: bool


class Manifest(TypedDict):
    """``manifest.json`` of a snapshot."""

    id: str
    agent: str
    time: str  # UTC, ISO 8601
    release_before: str | None  # the release running when it was taken
    release_after: str | None  # the release the deploy that took it switched to
    files: list[SnapshotFile]
    skipped: list[str]  # symlinks, sockets, SQLite side files: never copied
    env_sha256: NotRequired[str]  # the agent's environment before the deploy (file ``env``)
    imported_from: NotRequired[str]  # the id it had where it was exported (an import)


class SnapshotInfo(TypedDict):
    """``fleet-nodectl state list``: one snapshot, without its file list."""

    id: str
    time: str
    release_before: str | None
    release_after: str | None
    files: int
    bytes: int


class Snapshotted(TypedDict):
    """``fleet-nodectl state snapshot``: the new snapshot and the ones pruned."""

    snapshot: SnapshotInfo
    removed: list[str]


class Restored(TypedDict, total=False):
    """``fleet-nodectl state restore``: whether the snapshot is back (else the reason), and
    the agent's health after the start."""

    restored: bool
    reason: str
    snapshot: str
    healthy: bool
    problems: list[str]
    health: Any


def state_error(message: str) -> SystemExit:
    """A refusal: one line on stderr, exit 1, nothing changed."""
    return SystemExit(f"fleet-nodectl state: {message}")


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


def owner_names(uid: int, gid: int) -> tuple[str, str]:
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return user, group


def agent_owner(agent: str, state: Path) -> tuple[int, int]:
    """Who owns a restored state dir and everything in it: the agent's user and its group on
    this node (by name: an agent moved to another node keeps its user, whatever its uid),
    else the owner of the state dir there now. Never what a snapshot's manifest says: a
    backup file is not trusted to choose owners."""
    import pwd

    try:
        user = pwd.getpwnam(agent)
        return user.pw_uid, user.pw_gid
    except KeyError:
        pass
    try:
        info = os.stat(state, follow_symlinks=False)
    except FileNotFoundError:
        return os.geteuid(), os.getegid()
    return info.st_uid, info.st_gid


RESTORED_MODE_MASK = 0o755
"""What a restore keeps of a recorded mode: owner bits, and read/search for group and others;
never setuid, setgid, sticky, or write for anyone but the owner."""
MODE_RE = re.compile(r"[0-7]{4}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


def manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` (read from a snapshot or an archive) unusable, or None: an id,
    then the state dir itself first, then entries with a path inside, a type, a mode of four
    octal digits, and for files a size and a sha256; no path twice."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("id"), str) or \
            not SNAPSHOT_ID_RE.fullmatch(manifest["id"]):
        return "its manifest has no snapshot id"
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict) or \
            entries[0].get("path") != "." or entries[0].get("type") != "dir":
        return "its manifest has no entry for the state dir itself"
    seen: set[str] = set()
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not safe_relative(path) or path in seen:
            return f"{str(path)[:80]!r} is not a path inside the state dir (or is listed twice)"
        seen.add(path)
        parent = path.rpartition("/")[0]
        if path != "." and parent and parent not in seen:
            return f"{path!r} comes before the folder it is in"
        if entry.get("type") not in ("dir", "file") or not isinstance(entry.get("mode"), str) \
                or not MODE_RE.fullmatch(entry["mode"]):
            return f"{path!r} has no valid type and mode"
        if entry["type"] == "file" and not (
                type(entry.get("size")) is int and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str)
                and SHA256_RE.fullmatch(entry["sha256"])):
            return f"{path!r} has no valid size and sha256"
    return None


def snapshot_dir(agent: str) -> Path:
    """``SNAPSHOTS/AGENT``, created root-only (0700, with its parent)."""
    agent_name_checked(agent)
    for folder in (SNAPSHOTS, SNAPSHOTS / agent):
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.is_symlink() or not folder.is_dir():
            raise state_error(f"{folder} is not a folder")
        os.chmod(folder, 0o700)
    return SNAPSHOTS / agent


def agent_name_checked(agent: str) -> str:
    if not AGENT_RE.fullmatch(agent):
        raise state_error(f"{agent!r} is not an agent name ({AGENT_FORM})")
    return agent


def locked(agent: str) -> int:
    """Take the agent's snapshot lock (one snapshot, prune, restore or import at a time);
    released when its descriptor is closed or the process ends. (``bus.locks`` is the fleet's
    lock module; this script is stdlib only and cannot import it.)"""
    import fcntl

    fd = os.open(snapshot_dir(agent) / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def utc_time() -> str:
    """Now, in the fleet's one time format (``bus.timestamps.utc_timestamp``: UTC, milliseconds,
    ``Z``; this script is stdlib only and cannot import it)."""
    now_ms = time.time_ns() // 1000000
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms // 1000))
    return f"{seconds}.{now_ms % 1000:03d}Z"


def new_snapshot_id() -> str:
    """A new snapshot id: the UTC time to the microsecond (ids sort as the snapshots were
    taken)."""
    now_us = time.time_ns() // 1000
    seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_us // 1000000))
    return f"{seconds}{now_us % 1000000:06d}Z"


def copy_fd(source: int, target: int) -> tuple[int, str]:
    """Copy ``source`` to ``target`` (both descriptors); (bytes, sha256)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := os.read(source, CHUNK):
        digest.update(chunk)
        size += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view):]
    return size, digest.hexdigest()


def file_sha256(fd: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


SQLITE_READER = """
import sqlite3, sys
live = sqlite3.connect(sys.argv[1], timeout=30)  # a plain path, never a URI: no %-decoding
copy = sqlite3.connect(":memory:")
live.backup(copy)
live.close()
sys.stdout.buffer.write(copy.serialize())
"""
"""The online backup of one live database, run as the state dir's owner (the agent): every file
SQLite opens, rolls back or deletes on the way (a hot journal, its super-journal named inside
it) is one the agent could touch itself. The copy goes to stdout, serialized."""


PYTHON = sys.executable  # the interpreter the reader runs on (the node's python3)


class SQLiteUnreadable(Exception):
    """The database could not be read by SQLite (damaged, not a database): skipped."""


def sqlite_backup(source: Path, fd: int, target: Path, reader: tuple[int, int]) -> None:
    """Copy the live database ``source`` (opened as ``fd``, O_NOFOLLOW) to ``target`` through
    SQLite's online backup API: a consistent copy however the agent writes meanwhile (never a
    file copy of a live database). SQLite runs in a child process as ``reader`` (uid, gid: the
    state dir's owner), never as root, so nothing the agent plants (a name SQLite would
    decode, a symlink, a hot journal) makes root read, create or delete a file. Refused when
    ``source`` is not the file ``fd`` is (a symlink swapped in between)."""

    def same() -> bool:
        try:
            found, opened = os.lstat(source), os.fstat(fd)
        except OSError:
            return False
        return (stat.S_ISREG(found.st_mode) and (found.st_dev, found.st_ino)
                == (opened.st_dev, opened.st_ino) and os.path.realpath(source) == str(source))

    import subprocess  # here, as in systemctl()

    if not same():
        raise state_error(f"{source} changed while it was read (a symlink?): not copied")
    uid, gid = reader
    drop = os.geteuid() == 0 and uid != 0  # as root: become the owner (tests run as a user)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with subprocess.Popen(
                [PYTHON, "-I", "-c", SQLITE_READER, str(source)], cwd="/",
                env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=uid if drop else None,
                group=gid if drop else None, extra_groups=[] if drop else None) as child:
            assert child.stdout is not None and child.stderr is not None
            copy_fd(child.stdout.fileno(), out)
            error = child.stderr.read(4096).decode(errors="replace").strip()
        fsync_fd(out)
    finally:
        os.close(out)
    if child.returncode != 0:
        raise SQLiteUnreadable((error.splitlines() or ["no message"])[-1])
    if not same():
        raise state_error(f"{source} changed while it was read (a symlink?): not copied")


def entry_of(path: str, kind: str, info: os.stat_result, size: int = 0,
             sha: str = "", sqlite: bool = False) -> SnapshotFile:
    user, group = owner_names(info.st_uid, info.st_gid)
    return {"path": path, "type": kind, "mode": f"{info.st_mode & 0o7777:04o}", "user": user,
            "group": group, "uid": info.st_uid, "gid": info.st_gid, "size": size,
            "sha256": sha, "sqlite": sqlite}


def copy_tree(dir_fd: int, real: Path, relative: str, data: Path, manifest: Manifest,
              reader: tuple[int, int]) -> None:
    """Copy the folder open as ``dir_fd`` (``real`` on disk, ``relative`` in the state dir)
    into ``data``, recording each entry in ``manifest``; databases are read as ``reader``
    (:func:`sqlite_backup`)."""
    for name in sorted(os.listdir(dir_fd)):
        rel = f"{relative}/{name}" if relative != "." else name
        if not safe_relative(rel):  # a name no restore would take (a newline, ...)
            manifest["skipped"].append(repr(rel))
            continue
        if name.endswith(SQLITE_SIDE_FILES):  # come and go with the database's connections
            manifest["skipped"].append(rel)
            continue
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:  # gone since the folder was listed
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                dir_fd=dir_fd)
            except OSError:  # gone meanwhile, or swapped for a symlink
                manifest["skipped"].append(rel)
                continue
            try:
                (data / rel).mkdir(mode=0o700)
                manifest["files"].append(entry_of(rel, "dir", os.fstat(child)))
                copy_tree(child, real / name, rel, data, manifest, reader)
            finally:
                os.close(child)
            continue
        if not stat.S_ISREG(info.st_mode):
            manifest["skipped"].append(rel)
            continue
        try:
            source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:  # gone meanwhile, or swapped for a symlink
            manifest["skipped"].append(rel)
            continue
        try:
            opened = os.fstat(source)
            # a hard link may be another user's file (/etc/shadow where protected_hardlinks
            # is off): never read as root into a snapshot
            if not stat.S_ISREG(opened.st_mode) or opened.st_nlink > 1:
                manifest["skipped"].append(rel)
                continue
            is_sqlite = os.pread(source, len(SQLITE_HEADER), 0) == SQLITE_HEADER
            target = data / rel
            if is_sqlite:
                try:
                    sqlite_backup(real / name, source, target, reader)
                except SQLiteUnreadable as exc:  # a damaged database must not stop a deploy
                    target.unlink(missing_ok=True)
                    manifest["skipped"].append(f"{rel} (SQLite: {exc})")
                    continue
                os.chmod(target, 0o600)
                copied = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    size, sha = file_sha256(copied)
                    fsync_fd(copied)
                finally:
                    os.close(copied)
            else:
                out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600)
                try:
                    size, sha = copy_fd(source, out)
                    fsync_fd(out)
                finally:
                    os.close(out)
            manifest["files"].append(entry_of(rel, "file", opened, size, sha, is_sqlite))
        finally:
            os.close(source)


def sync_tree(root: Path) -> None:
    """fsync every folder under ``root`` (the files were synced as they were written)."""
    for folder, _, _ in os.walk(root):
        sync_dir(Path(folder))


def read_manifest(folder: Path) -> Manifest:
    with (folder / MANIFEST).open() as handle:
        manifest: Manifest = json.load(handle)
    return manifest


def info_of(manifest: Manifest) -> SnapshotInfo:
    files = [entry for entry in manifest["files"] if entry["type"] == "file"]
    return {"id": manifest["id"], "time": manifest["time"],
            "release_before": manifest.get("release_before"),
            "release_after": manifest.get("release_after"), "files": len(files),
            "bytes": sum(entry["size"] for entry in files)}


def snapshots(agent: str) -> list[Manifest]:
    """The agent's complete snapshots, newest first (a folder renamed into place only once
    written and synced: a half-written one is a ``.tmp-*`` folder, never listed)."""
    folder = SNAPSHOTS / agent_name_checked(agent)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if SNAPSHOT_ID_RE.fullmatch(path.name) and not path.is_symlink():
            try:
                found.append(read_manifest(path))
            except (OSError, ValueError):
                continue
    return sorted(found, key=lambda manifest: manifest["id"], reverse=True)


def prune_snapshots(agent: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` snapshots, and leftovers of interrupted ones."""
    folder = SNAPSHOTS / agent
    removed = [manifest["id"] for manifest in snapshots(agent)[max(keep, 1):]]
    for name in removed:
        rmtree(folder / name)
    for stale in folder.glob(".tmp-*"):
        rmtree(stale, ignore_errors=True)
    if removed:
        sync_dir(folder)
    return removed


ENV_FILES = ("env", "env.previous")
"""Which of the agent's environment files a deploy's snapshot keeps: ``env.previous`` when
the deploy has just replaced the environment (the keys phase kept the old one there), else
``env``: either way the environment the release being left ran with."""
SNAPSHOT_ENV = "env"  # its copy in the snapshot folder (root's, 0600; never exported)


def take_snapshot(agent: str, keep: int = KEEP_SNAPSHOTS, release_before: str | None = None,
                  release_after: str | None = None, env_before: str | None = None
                  ) -> Snapshotted:
    """Snapshot the agent's state dir: written to a temporary folder, synced, then renamed
    into place (a kill midway leaves no snapshot listed), then the newest ``keep`` kept.
    ``env_before`` (one of :data:`ENV_FILES`): that environment file of the agent is kept
    with it, for ``rollback --with-state``."""
    state = STATE_ROOT / agent_name_checked(agent)
    lock = locked(agent)
    try:
        folder = SNAPSHOTS / agent
        for stale in folder.glob(".tmp-*"):  # an interrupted snapshot's (we hold the lock)
            rmtree(stale, ignore_errors=True)
        ident = free_id(folder)
        temp = folder / f".tmp-{ident}"
        temp.mkdir(mode=0o700)
        (temp / "data").mkdir(mode=0o700)
        manifest: Manifest = {
            "id": ident, "agent": agent,
            "time": utc_time(),
            "release_before": release_before, "release_after": release_after,
            "files": [], "skipped": []}
        try:
            root = os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            rmtree(temp)
            raise state_error(f"{state} is not a folder ({exc.strerror})") from None
        try:
            top = os.fstat(root)
            manifest["files"].append(entry_of(".", "dir", top))
            copy_tree(root, state, ".", temp / "data", manifest, (top.st_uid, top.st_gid))
        except BaseException:
            rmtree(temp, ignore_errors=True)
            raise
        finally:
            os.close(root)
        if env_before is not None:
            keep_env(agent, env_before, temp, manifest)
        publish(temp, folder, manifest)
        removed = prune_snapshots(agent, keep)
        return {"snapshot": info_of(manifest), "removed": removed}
    finally:
        os.close(lock)


def keep_env(agent: str, name: str, temp: Path, manifest: Manifest) -> None:
    """Copy ``/etc/fleet/AGENT/NAME`` (not through a symlink) into the snapshot being built
    and record its sha256; an absent file (a first deploy) records nothing."""
    if name not in ENV_FILES:
        raise state_error(f"{name!r} is not an environment file ({', '.join(ENV_FILES)})")
    try:
        source = os.open(ETC / agent / name, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        out = os.open(temp / SNAPSHOT_ENV, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _, manifest["env_sha256"] = copy_fd(source, out)
            fsync_fd(out)
        finally:
            os.close(out)
    finally:
        os.close(source)


def snapshot_env(folder: Path, manifest: Manifest) -> bytes | None:
    """The environment kept with a snapshot (checked against its sha256), or None when it
    kept none (taken outside a deploy, by an older release, or imported)."""
    want = manifest.get("env_sha256")
    try:
        fd = os.open(folder / SNAPSHOT_ENV, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        data = b""
        while chunk := os.read(fd, CHUNK):
            data += chunk
    finally:
        os.close(fd)
    if want is None or hashlib.sha256(data).hexdigest() != want:
        raise state_error(f"snapshot {manifest['id']}: its environment does not match its "
                          "sha256 in the manifest (the snapshot is damaged)")
    return data


def put_env(agent: str, content: bytes) -> None:
    """Replace the agent's environment file atomically (root's, 0600, synced)."""
    folder = ETC / agent
    temp = folder / f".env.restore-{os.getpid()}"
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(out, content)
        fsync_fd(out)
    finally:
        os.close(out)
    os.replace(temp, folder / "env")
    sync_dir(folder)


def free_id(folder: Path) -> str:
    """A new snapshot id no snapshot in ``folder`` has."""
    ident = new_snapshot_id()
    while (folder / ident).exists():
        ident = new_snapshot_id()
    return ident


def publish(temp: Path, folder: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into the finished snapshot ``temp``, sync it all, then rename it
    into ``folder`` under its id (listed only from then on)."""
    out = os.open(temp / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(out, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n")
        fsync_fd(out)
    finally:
        os.close(out)
    sync_tree(temp)
    temp.rename(folder / manifest["id"])
    sync_dir(folder)


def find_snapshot(agent: str, ident: str) -> tuple[Path, Manifest]:
    """The snapshot ``ident`` of ``agent`` (refused when it is not there)."""
    snapshot_id_checked(ident)
    folder = SNAPSHOTS / agent_name_checked(agent) / ident
    try:
        return folder, read_manifest(folder)
    except (OSError, ValueError):
        raise state_error(f"agent {agent} has no snapshot {ident} (see `fleet-nodectl state "
                          f"list --agent {agent}`)") from None


def snapshot_id_checked(ident: str) -> str:
    if not SNAPSHOT_ID_RE.fullmatch(ident):
        raise state_error(f"{ident!r} is not a snapshot id ({SNAPSHOT_ID_FORM})")
    return ident


def safe_relative(path: str) -> bool:
    """Whether ``path`` (from a manifest) stays inside its folder: relative, no ``..``, no
    empty part, no control character."""
    parts = path.split("/")
    return (path == "." or (not path.startswith("/") and all(
        part not in ("", ".", "..") for part in parts))) and path.isprintable()


def rebuild(folder: Path, manifest: Manifest, target: Path, owner: tuple[int, int]) -> None:
    """Build ``target`` (a new folder) from the snapshot in ``folder``: each file checked
    against its sha256, everything owned by ``owner`` (:func:`agent_owner`) with its
    recorded mode cut to :data:`RESTORED_MODE_MASK`, everything synced. Nothing is followed
    through a symlink: the snapshot's files are opened O_NOFOLLOW and every path is checked
    to stay inside."""
    data = folder / "data"
    problem = manifest_problem(manifest)
    if problem:
        raise state_error(f"snapshot {manifest.get('id')}: {problem}")
    entries = manifest["files"]
    target.mkdir(mode=0o700)
    for entry in entries:
        rel = entry["path"]
        dest = target if rel == "." else target / rel
        if entry["type"] == "dir":
            if rel != ".":
                dest.mkdir(mode=0o700)
            continue
        if os.path.realpath(dest.parent) != str(dest.parent):
            raise state_error(f"snapshot {manifest['id']}: {rel!r} leaves the state dir")
        source = os.open(data / rel, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                size, sha = copy_fd(source, out)
                if sha != entry["sha256"] or size != entry["size"]:
                    raise state_error(f"snapshot {manifest['id']}: {rel} does not match its "
                                      "sha256 in the manifest (the snapshot is damaged)")
                fsync_fd(out)
            finally:
                os.close(out)
        finally:
            os.close(source)
    uid, gid = owner
    for entry in reversed(entries):  # owners and modes last: a 0500 folder is filled first
        dest = target if entry["path"] == "." else target / entry["path"]
        os.chown(dest, uid, gid, follow_symlinks=False)
        os.chmod(dest, int(entry["mode"], 8) & RESTORED_MODE_MASK, follow_symlinks=False)
    sync_tree(target)


def swap_in(new: Path, state: Path) -> None:
    """Put ``new`` in place of ``state`` (absent or a folder) in one rename where the kernel
    can (``renameat2(RENAME_EXCHANGE)``), then delete the old state."""
    import ctypes

    old = state.parent / f".{state.name}.replaced-{os.getpid()}"
    exchanged = False
    if state.is_dir() and not state.is_symlink():
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            at_fdcwd, rename_exchange = -100, 2
            exchanged = renameat2(at_fdcwd, bytes(new), at_fdcwd, bytes(state),
                                  rename_exchange) == 0
        if exchanged:
            new.rename(old)
        else:
            state.rename(old)
    elif state.is_symlink() or state.exists():
        raise state_error(f"{state} is not a folder: nothing restored")
    if not exchanged:
        new.rename(state)
    sync_dir(state.parent)
    rmtree(old, ignore_errors=True)


def restore_state(agent: str, ident: str) -> None:
    """Replace the agent's state dir by snapshot ``ident`` (its units must be stopped): built
    beside it in a fresh folder, then swapped in."""
    folder, manifest = find_snapshot(agent, ident)
    state = STATE_ROOT / agent
    new = STATE_ROOT / f".{agent}.restore-{os.getpid()}"
    rmtree(new, ignore_errors=True)
    for stale in STATE_ROOT.glob(f".{agent}.restore-*"):
        rmtree(stale, ignore_errors=True)
    try:
        rebuild(folder, manifest, new, agent_owner(agent, state))
    except OSError as exc:  # a file of the snapshot missing, or a symlink where it was
        rmtree(new, ignore_errors=True)
        raise state_error(f"snapshot {ident} of {agent} cannot be restored ({exc}): the "
                          "state dir is unchanged") from None
    except BaseException:
        rmtree(new, ignore_errors=True)
        raise
    swap_in(new, state)


def stop_units(unit: str, runtime_unit: str | None) -> None:
    """Stop the agent's runtime, then its gateway (nothing writes its state meanwhile)."""
    for name in ([runtime_unit] if runtime_unit else []) + [unit]:
        systemctl("stop", name)


def start_units(unit: str, runtime_unit: str | None) -> None:
    for name in [unit] + ([runtime_unit] if runtime_unit else []):
        systemctl("start", name)


def restore(agent: str, ident: str, unit: str, runtime_unit: str | None, port: int,
            timeout: float) -> Restored:
    """Stop the agent, put snapshot ``ident`` back as its state, start it and verify it like
    a rollback does (/health with the current release, its units staying up)."""
    find_snapshot(agent, ident)  # refused before anything stops
    lock = locked(agent)
    try:
        stop_units(unit, runtime_unit)
        try:
            restore_state(agent, ident)
        finally:
            start_units(unit, runtime_unit)
    finally:
        os.close(lock)
    problems, body = checked(unit, runtime_unit, port, {"release": current_release() or ""},
                             timeout)
    return {"restored": True, "snapshot": ident, "healthy": not problems,
            "problems": problems, "health": body}


def agent_units(agent: str) -> tuple[str, str | None]:
    """The agent's gateway unit and its runtime unit (None when this node has none)."""
    agent_name_checked(agent)
    runtime = f"fleet-runtime-{agent}.service"
    return (f"fleet-agent-{agent}.service",
            runtime if (UNIT_DIR / runtime).is_file() else None)


def hand_over(agent: str, keep: int) -> Snapshotted:
    """Stop the agent (runtime first, then the gateway: once stopped it accepts nothing, and
    every message it acknowledged is committed) and snapshot its state: the snapshot a move
    carries to the agent's new node. Its units stay enabled: ``resume`` starts them again."""
    unit, runtime_unit = agent_units(agent)
    stop_units(unit, runtime_unit)
    return take_snapshot(agent, keep)


def resume(agent: str, port: int, timeout: float) -> Restored:
    """Start the agent again where it was stopped (a move that could not finish) and verify
    it like a restore does."""
    unit, runtime_unit = agent_units(agent)
    start_units(unit, runtime_unit)
    problems, body = checked(unit, runtime_unit, port, {"release": current_release() or ""},
                             timeout)
    return {"restored": False, "reason": "resumed", "healthy": not problems,
            "problems": problems, "health": body}


class Retired(TypedDict):
    """``fleet-nodectl state retire``: the units and folders removed, and what was kept."""

    removed: list[str]
    kept: list[str]


def retire(agent: str, purge: bool) -> Retired:
    """Remove the agent's service from this node (it moved): its units stopped, disabled and
    deleted, and ``/etc/fleet/AGENT`` (config, soul, registry copy, the env file with its
    secrets) deleted. Its state dir and snapshots stay unless ``purge``."""
    unit, runtime_unit = agent_units(agent)
    removed: list[str] = []
    for name in ([runtime_unit] if runtime_unit else []) + [unit]:
        systemctl("disable", "--now", name, check=False)
        path = UNIT_DIR / name
        if path.is_file():
            path.unlink()
            removed.append(str(path))
    systemctl("daemon-reload")
    folders = [ETC / agent] + ([STATE_ROOT / agent, SNAPSHOTS / agent] if purge else [])
    for folder in folders:
        if folder.is_dir() and not folder.is_symlink():
            rmtree(folder)
            removed.append(str(folder))
    kept = [str(folder) for folder in (STATE_ROOT / agent, SNAPSHOTS / agent)
            if folder.exists()]
    return {"removed": removed, "kept": kept}


def snapshot_before(agent: str, release: str | None) -> Manifest | None:
    """The newest snapshot taken by the deploy that brought ``release`` (its release_after)."""
    return next((manifest for manifest in snapshots(agent)
                 if release and manifest.get("release_after") == release), None)


def export_snapshot(agent: str, ident: str, out: Any) -> None:
    """Write snapshot ``ident`` as a tar stream (``manifest.json``, ``data/...``) to ``out``."""
    import tarfile

    folder, _ = find_snapshot(agent, ident)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder / MANIFEST, arcname=MANIFEST)
        tar.add(folder / "data", arcname="data", recursive=True)


def import_snapshot(agent: str, stream: Any) -> SnapshotInfo:
    """Read a snapshot exported by :func:`export_snapshot` from ``stream`` into the agent's
    snapshots, under a new id of this node's clock (the archive's id is kept as
    ``imported_from``: an archive does not choose where it sorts or whether it is pruned).
    Only folders and regular files inside ``data/`` are taken, each once, each file checked
    against the manifest's sha256; anything else refuses the whole import. Importing the same
    archive again, or one exported from this node's own snapshot, adds nothing."""
    import tarfile

    lock = locked(agent)
    folder = SNAPSHOTS / agent
    temp = folder / f".tmp-import-{os.getpid()}"
    rmtree(temp, ignore_errors=True)
    temp.mkdir(mode=0o700)
    try:
        (temp / "data").mkdir(mode=0o700)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    take_member(tar, member, temp)
        except (tarfile.TarError, EOFError) as exc:
            raise state_error(f"the archive cannot be read ({exc}): nothing imported") from None
        try:
            manifest = read_manifest(temp)
        except (OSError, ValueError):
            raise state_error("the archive has no readable manifest.json: nothing "
                              "imported") from None
        problem = manifest_problem(manifest)
        if problem:
            raise state_error(f"the archive's snapshot: {problem}: nothing imported")
        check_files(temp, manifest)
        original = manifest["id"]
        for known in snapshots(agent):
            if original in (known["id"], known.get("imported_from")) and same_files(
                    known, manifest):
                return info_of(known)  # already here, the same
        manifest.pop("env_sha256", None)  # an archive never carries an environment
        manifest.update({"id": free_id(folder), "agent": agent, "imported_from": original})
        (temp / MANIFEST).unlink()
        publish(temp, folder, manifest)
        return info_of(manifest)
    finally:
        rmtree(temp, ignore_errors=True)
        os.close(lock)


def take_member(tar: Any, member: Any, temp: Path) -> None:
    """One archive member into ``temp``: ``manifest.json``, or a folder or regular file
    under ``data/`` whose folder came before it; anything else refuses the import."""
    name = member.name.rstrip("/")
    inside = name == MANIFEST or name == "data" or (
        name.startswith("data/") and safe_relative(name[5:]))
    if not inside or not (member.isfile() or member.isdir()):
        raise state_error(f"the archive holds {member.name[:200]!r}, which is not a "
                          "snapshot's file: nothing imported")
    dest = temp / name
    try:
        if member.isdir():
            dest.mkdir(mode=0o700, exist_ok=name == "data")
            return
        if os.path.realpath(dest.parent) != str(dest.parent):
            raise state_error(f"the archive's {member.name[:200]!r} leaves the snapshot")
        handle = tar.extractfile(member)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := handle.read(CHUNK):
                os.write(out, chunk)
            fsync_fd(out)
        finally:
            os.close(out)
    except OSError as exc:  # listed twice, its folder missing or a file: not an export
        raise state_error(f"the archive's {member.name[:200]!r} cannot be placed "
                          f"({exc.strerror}): nothing imported") from None


def same_files(one: Manifest, other: Manifest) -> bool:
    """Whether two manifests list the same files with the same sha256s, owners and modes."""
    return sorted(map(json.dumps, one["files"])) == sorted(map(json.dumps, other["files"]))


def check_files(folder: Path, manifest: Manifest, outcome: str = "nothing imported") -> None:
    """Refuse a snapshot whose files are not exactly its manifest's, with those sha256s (the
    message ends with ``outcome``)."""
    data = folder / "data"
    listed = {entry["path"]: entry for entry in manifest.get("files", [])}
    found = {str(path.relative_to(data)) for path in data.rglob("*")}
    wanted = {path for path in listed if path != "."}
    if found != wanted:
        extra = sorted(found ^ wanted)[:3]
        raise state_error(f"snapshot {manifest.get('id')}: its files differ from its manifest "
                          f"({', '.join(extra)}): {outcome}")
    for path, entry in listed.items():
        if not safe_relative(path):
            raise state_error(f"snapshot {manifest.get('id')}: {path!r} is not a path inside "
                              "the state dir")
        if entry["type"] == "file":
            fd = os.open(data / path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                size, sha = file_sha256(fd)
            finally:
                os.close(fd)
            if (size, sha) != (entry["size"], entry["sha256"]):
                raise state_error(f"snapshot {manifest.get('id')}: {path} does not match its "
                                  f"sha256: {outcome}")


def state_command(args: argparse.Namespace) -> Any:
    """``fleet-nodectl state SUBCOMMAND``."""
    if args.state_command == "snapshot":
        return take_snapshot(args.agent, args.keep, args.release_before, args.release_after,
                             args.env_before)
    if args.state_command == "list":
        return [info_of(manifest) for manifest in snapshots(args.agent)]
    if args.state_command == "restore":
        return restore(args.agent, args.snapshot, args.unit, args.runtime_unit, args.port,
                       args.timeout)
    if args.state_command == "hand-over":
        return hand_over(args.agent, args.keep)
    if args.state_command == "resume":
        return resume(args.agent, args.port, args.timeout)
    if args.state_command == "retire":
        return retire(args.agent, args.purge)
    if args.state_command == "export":
        sys.stdout.flush()
        export_snapshot(args.agent, args.snapshot, sys.stdout.buffer)
        return None
    return import_snapshot(args.agent, sys.stdin.buffer)


def add_state_parser(commands: Any) -> None:
    """The ``state`` subcommands."""
    state = commands.add_parser("state", help="snapshot, list, restore, export or import an "
                                              "agent's state dir")
    sub = state.add_subparsers(dest="state_command", required=True)
    for name, text in (("snapshot", "snapshot the state dir (keeping the newest N)"),
                       ("list", "the agent's snapshots, newest first"),
                       ("restore", "stop the agent, restore a snapshot, start and verify"),
                       ("export", "a snapshot as a tar stream on stdout"),
                       ("import", "a snapshot from a tar stream on stdin"),
                       ("hand-over", "stop the agent and take its final snapshot (a move)"),
                       ("resume", "start the agent again and verify it (a failed move)"),
                       ("retire", "remove the agent's units and /etc/fleet/AGENT (it moved); "
                                  "--purge: its state and snapshots too")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--agent", required=True, type=agent_name)
        if name in ("snapshot", "hand-over"):
            cmd.add_argument("--keep", type=keep_count, default=KEEP_SNAPSHOTS)
        if name == "resume":
            cmd.add_argument("--port", type=int, required=True)
            cmd.add_argument("--timeout", type=float, default=20.0)
        if name == "retire":
            cmd.add_argument("--purge", action="store_true")
        if name == "snapshot":
            cmd.add_argument("--release-before", type=release_id, default=None)
            cmd.add_argument("--release-after", type=release_id, default=None)
            cmd.add_argument("--env-before", choices=ENV_FILES, default=None,
                             help="keep this environment file of the agent with the snapshot "
                                  "(the one the release being left ran with)")
        if name in ("restore", "export"):
            cmd.add_argument("--snapshot", required=True, type=snapshot_id)
        if name == "restore":
            cmd.add_argument("--unit", required=True)
            cmd.add_argument("--runtime-unit", default=None)
            cmd.add_argument("--port", type=int, required=True)
            cmd.add_argument("--timeout", type=float, default=20.0)


COMMANDS = ("switch", "prune", "state", "verify", "rollback", "facts")
USAGE = "%(prog)s [-h] {" + ",".join(COMMANDS) + "} ..."


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; ``only``: with just that subcommand (a run of one command
    builds only its own parser: building all of them cost verify about 3 ms)."""
    parser = argparse.ArgumentParser(prog="fleet-nodectl", description=__doc__.splitlines()[0],
                                     usage=USAGE)  # every command's name, with `only` too
    commands = parser.add_subparsers(dest="command", required=True, prog=parser.prog)
    if only in (None, "switch"):
        switch_cmd = commands.add_parser("switch", help="point current at a release")
        switch_cmd.add_argument("release", type=release_id)
    if only in (None, "prune"):
        prune_cmd = commands.add_parser("prune", help="keep only the newest releases")
        prune_cmd.add_argument("--keep", type=int, default=5)
    if only in (None, "state"):
        add_state_parser(commands)
    for name in ("verify", "rollback", "facts"):
        if only not in (None, name):
            continue
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
            sub.add_argument("--with-state", type=agent_name, default=None, metavar="AGENT",
                             help="also restore the agent's state snapshot taken before the "
                                  "current release was deployed")
        else:
            sub.add_argument("--agent", required=True)
            sub.add_argument("--login-user", default="root")
        if name != "facts":
            sub.add_argument("--agent", help="also report the audit facts of this agent")
            sub.add_argument("--login-user", default="root")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    result: Any
    if args.command == "state":
        result = state_command(args)
        if result is None:  # export: the tar stream is the output
            return 0
    elif args.command == "switch":
        result = switch(args.release)
    elif args.command == "prune":
        result = prune(args.keep)
    elif args.command == "facts":
        result = facts(args)
    else:
        looks = Looks()
        checked_agent = (verify(args, looks) if args.command == "verify" else
                         rollback(args.unit, args.port, args.to, args.timeout, args.runtime_unit,
                                  with_state=args.with_state))
        if args.agent:
            checked_agent["facts"] = facts(args, looks)
        result = checked_agent
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
