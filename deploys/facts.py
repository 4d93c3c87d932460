"""Custom pyinfra facts of the fleet deploy (one shell round trip each)."""

from __future__ import annotations

import json
import re
import shlex
import time
from datetime import UTC, datetime
from typing import NotRequired, TypedDict, cast

from pyinfra.api import FactBase

from fleet.node.nodectl import AgentFacts, unknown_agent

PYTHON_VERSION_RE = re.compile(r"Python ([0-9]+)\.([0-9]+)(?:\.[0-9]+)?\S*")  # python3 -V
UNIT_TIME_FORMAT = "%a %Y-%m-%d %H:%M:%S.%f UTC"  # systemctl show --timestamp=us+utc


NEWLINE = "_nl='\n'"  # $_nl: a newline, for parameter expansions (dash has no $'\n')
# `_out PREFIX TEXT`: each line of TEXT after PREFIX (sed 's/^/PREFIX/' by builtins, no process);
# in sha256sum's lines (PREFIX sha|) also the first two spaces as "|". Nothing for an empty TEXT.
PREFIX_LINES = ("_out() { [ -n \"$2\" ] || return 0; _t=$2$_nl; while [ -n \"$_t\" ]; do "
                "_o=${_t%%\"$_nl\"*}; _t=${_t#*\"$_nl\"}; case $1$_o in \"sha|\"*\"  \"*) "
                "_o=${_o%%\"  \"*}\"|\"${_o#*\"  \"};; esac; printf '%s%s\\n' \"$1\" \"$_o\"; "
                "done; }")


class Basics(TypedDict):
    """What preflight checks of a node (:class:`NodeBasics`)."""

    os: str
    os_like: str
    systemd: bool
    python: tuple[int, ...]  # (3, 11); () when python3 -V said no version
    free_mb: int | None
    skew_s: float | None  # the node's clock minus the controller's
    lock: str  # the deploy lock's owner line, "" when free


class PathInfo(TypedDict):
    """One managed path as ``stat`` (and ``sha256sum``, for files) saw it."""

    type: str  # stat's %F: "regular file", "directory", "symbolic link"
    user: str
    group: str
    mode: str  # octal, e.g. "644"
    sha256: str | None  # files only
    mtime: float


class UnitInfo(TypedDict, total=False):
    """The agent unit as ``systemctl show`` saw it (empty when systemd knows none)."""

    active: str  # ActiveState
    enabled: str  # UnitFileState
    started: float | None  # ActiveEnterTimestamp, Unix time
    need_reload: bool  # its unit file changed since systemd loaded it


class TimerInfo(TypedDict, total=False):
    """A schedule's timer as ``systemctl show`` saw it."""

    active: str  # ActiveState
    enabled: str  # UnitFileState


class ScheduleUnits(TypedDict):
    """The agent's schedule units on the node (:mod:`fleet.core.schedules`)."""

    files: list[str]  # every /etc/systemd/system/fleet-schedule-AGENT_* there
    timers: dict[str, TimerInfo]  # the registry's timers, by unit name


class NodeSnapshot(TypedDict):
    """Everything the deploy manages on a node, read in one round trip (:class:`NodeState`)."""

    paths: dict[str, PathInfo]  # only the paths that exist
    current: str | None  # the release /opt/fleet/current points at
    releases: list[str]  # installed releases
    user: bool  # the agent's user exists
    group: bool  # ... and its group
    unit: UnitInfo
    authorized_keys: list[str]  # the login user's lines
    schedules: ScheduleUnits
    links: NotRequired[dict[str, str]]  # the symbolic links it was asked about: their targets
    basics: NotRequired[Basics]  # when preflight asked for them in the same round trip


def empty_basics() -> Basics:
    """A node that answered nothing of what preflight asks."""
    return {"os": "", "os_like": "", "systemd": False, "python": (), "free_mb": None,
            "skew_s": None, "lock": ""}


def empty_snapshot() -> NodeSnapshot:
    """A node with nothing of the deploy's on it."""
    return {"paths": {}, "current": None, "releases": [], "user": False, "group": False,
            "unit": {}, "authorized_keys": [], "schedules": {"files": [], "timers": {}}}


def unit_started(value: str) -> float | None:
    """The Unix time of a ``systemctl show --timestamp=us+utc`` timestamp (None: never)."""
    try:
        return datetime.strptime(value.strip(), UNIT_TIME_FORMAT).replace(
            tzinfo=UTC).timestamp()
    except ValueError:
        return None


def newer_than_unit(node: NodeSnapshot, paths: list[str]) -> list[str]:
    """The ``paths`` modified after the node's unit last became active: files the running
    service has not loaded (a deploy that failed between writing them and the restart).
    Empty when the unit is not active (it will be started, reading them all)."""
    started = node["unit"].get("started")
    if node["unit"].get("active") != "active" or started is None:
        return []
    return [path for path in paths
            if (info := node["paths"].get(path)) is not None and info["mtime"] > started]


class NodeBasics(FactBase[Basics]):
    """
    What preflight checks, read in one command:

    .. code:: python

        {"os": "debian", "os_like": "", "systemd": True, "python": (3, 11),
         "free_mb": 10240, "skew_s": 0.02, "lock": "controller:1234:run-id 1764290000"}
    """

    default = staticmethod(empty_basics)

    def command(self, lock_dir: str) -> str:
        lock = shlex.quote(f"{lock_dir}/owner")
        return "; ".join([
            NEWLINE,
            "(. /etc/os-release 2>/dev/null; echo \"os=$ID\"; echo \"os_like=$ID_LIKE\")",
            "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi",
            "echo \"python=$(python3 -V 2>/dev/null)\"",
            # df's second line, fourth field (awk 'NR==2 {print $4}' without awk)
            "_df=$(df -Pk /opt 2>/dev/null); case $_df in *\"$_nl\"*) _df=${_df#*\"$_nl\"}; "
            "_df=${_df%%\"$_nl\"*};; *) _df=;; esac; set -f; set -- $_df; set +f; "
            "echo \"free_kb=$4\"",
            "echo \"epoch=$(date +%s.%N)\"",
            f"_lock=; [ ! -e {lock} ] || _lock=$(cat {lock} 2>/dev/null); echo \"lock=$_lock\"",
        ])

    def process(self, output: list[str]) -> Basics:
        received = time.time()
        raw = dict(line.split("=", 1) for line in output if "=" in line)
        found = PYTHON_VERSION_RE.fullmatch(raw.get("python", ""))
        version = (int(found[1]), int(found[2])) if found else ()
        try:
            skew = float(raw.get("epoch", "")) - received
        except ValueError:
            skew = None
        return {
            "os": raw.get("os", ""),
            "os_like": raw.get("os_like", ""),
            "systemd": raw.get("systemd") == "yes",
            "python": version,
            "free_mb": int(raw["free_kb"]) // 1024 if raw.get("free_kb", "").isdigit() else None,
            "skew_s": skew,
            "lock": raw.get("lock", ""),
        }


class AgentAudit(FactBase[AgentFacts]):
    """
    The audit view of one agent, from ``fleet-nodectl facts`` (see :mod:`fleet.node.nodectl`):
    release, soul and config hashes, file modes, unit state, listening ports, authorized key
    fingerprints, sudoers lines and the gateway's /health answer.
    """

    default = unknown_agent

    def command(self, nodectl: str, agent: str, unit: str, port: int, login_user: str) -> str:
        args = [nodectl, "facts", "--agent", agent, "--unit", unit, "--port", str(port),
                "--login-user", login_user]
        return " ".join(shlex.quote(arg) for arg in args)

    def process(self, output: list[str]) -> AgentFacts:
        return cast(AgentFacts, json.loads("\n".join(output)))


ASCII_ONLY = "LC_ALL=C tr '\\200-\\377' '?'"
"""The snapshot's output with every byte over 127 made a ``?``: pyinfra decodes a command's
output as strict UTF-8, so one byte that is not (in a key's comment, a file name, a symlink's
target) would fail the host's whole snapshot. Nothing the deploy decides from it is
non-ASCII when it is the deploy's own: a release id, a path, a unit, a key's type and data."""


class NodeState(FactBase[NodeSnapshot]):
    """
    One snapshot of everything the deploy manages on a node (read once per host and run):

    .. code:: python

        {"paths": {"/opt/fleet": {"type": "directory", "user": "root", "group": "root",
                                  "mode": "755", "sha256": None}},
         "current": "444a224b3f00", "releases": ["444a224b3f00"],
         "user": True, "group": True,
         "unit": {"active": "active", "enabled": "enabled", "started": 1764290000.5,
                  "need_reload": False},
         "authorized_keys": ["ssh-ed25519 AAAA... op@laptop"]}

    Each path also has its ``mtime`` (Unix time); ``unit.started`` is when the unit last
    became active, so a file newer than it is one the running service has not loaded
    (:func:`newer_than_unit`); ``unit.need_reload``: its unit file changed since systemd
    loaded it.

    Given ``lock_dir``, the same round trip also reads what preflight checks (``NodeBasics``)
    into ``"basics"``. Given ``schedule_glob`` (``/etc/systemd/system/fleet-schedule-AGENT_``,
    matched with a trailing ``*``) and ``timers``, ``"schedules"`` lists the agent's schedule
    unit files there and the state of those timers:
    ``{"files": [...], "timers": {"fleet-schedule-a_x.timer": {"active": "active",
    "enabled": "enabled"}}}``.
    """

    default = staticmethod(empty_snapshot)

    def command(self, paths: list[str], user: str, unit: str, current: str, releases_dir: str,
                keys_file: str, lock_dir: str | None = None, schedule_glob: str = "",
                timers: tuple[str, ...] = (), links: tuple[str, ...] = ()) -> str:
        # Few processes, none per path or per line: one stat, one sha256sum, one systemctl for
        # the unit and the timers; lines are prefixed by shell builtins (``_out``), not sed.
        quoted = " ".join(shlex.quote(path) for path in paths)
        basics = [f"_out 'basics|' \"$({NodeBasics().command(lock_dir)})\""] if lock_dir else []
        schedules = [f"for f in {shlex.quote(schedule_glob)}*; do [ -e \"$f\" ] && "
                     "echo \"schedule|$f\"; done"] if schedule_glob else []
        timer_lines = ["case $_units in *\"$_nl$_nl\"*) _out 'timer|' "
                       "\"${_units#*\"$_nl$_nl\"}\";; esac"] if timers else []
        return "{ " + "; ".join([
            NEWLINE,
            PREFIX_LINES,
            f"stat -c 'path|%n|%F|%U|%G|%a|%.9Y' -- {quoted} 2>/dev/null",
            f"_sha=$(for p in {quoted}; do [ -f \"$p\" ] && set -- \"$@\" \"$p\"; done; "
            "[ $# -eq 0 ] || sha256sum -- \"$@\"); _out 'sha|' \"$_sha\"",
            f"echo \"current|$(readlink {shlex.quote(current)} 2>/dev/null)\"",
            *(f"[ -L {shlex.quote(link)} ] && printf 'link|%s|%s\\n' {shlex.quote(link)} "
              f"\"$(readlink -- {shlex.quote(link)})\"" for link in links),
            f"for d in {shlex.quote(releases_dir)}/*/site; do _rel=${{d%/site}}; "
            "[ -d \"$d\" ] && echo \"release|${_rel##*/}\"; done",
            f"getent passwd {shlex.quote(user)} >/dev/null && echo user",
            f"getent group {shlex.quote(user)} >/dev/null && echo group",
            # One systemctl: a block per unit, in the order named, a blank line between them;
            # the first is the agent's unit, the rest the timers (printed where they were).
            f"_units=$(systemctl show {' '.join(map(shlex.quote, (unit, *timers)))} "
            "--timestamp=us+utc -p Id -p ActiveState -p UnitFileState -p ActiveEnterTimestamp "
            "-p NeedDaemonReload); _out 'unit|' \"${_units%%\"$_nl$_nl\"*}\"",
            # Each line as key|LINE, a last one without a newline too: sed's `$a\` ends it
            # (it took the next output line with it: a timer, or preflight's os=); one sed,
            # whatever the file's size. Only a regular file is read (a FIFO would hang).
            f"[ ! -f {shlex.quote(keys_file)} ] || sed -e 's/^/key|/' -e '$a\\' -- "
            f"{shlex.quote(keys_file)} 2>/dev/null",
            *schedules,
            *timer_lines,
            *basics,  # last: its clock reading is closest to when the output arrives
            "true",
        ]) + "; } | " + ASCII_ONLY

    def process(self, output: list[str]) -> NodeSnapshot:
        state = empty_snapshot()
        basics = []
        timer: dict[str, str] = {}
        for line in [*output, "timer|"]:  # systemctl show: a blank line ends each unit
            kind, _, rest = line.partition("|")
            if kind == "timer":
                if rest:
                    name, _, value = rest.partition("=")
                    timer[name] = value
                elif timer.get("Id"):
                    state["schedules"]["timers"][timer["Id"]] = {
                        "active": timer.get("ActiveState", ""),
                        "enabled": timer.get("UnitFileState", "")}
                    timer = {}
            elif kind == "schedule":
                state["schedules"]["files"].append(rest)
            elif kind == "basics":
                basics.append(rest)
            elif kind == "path":
                path, kind_, user, group, mode, mtime = (rest.split("|") + [""] * 6)[:6]
                state["paths"][path] = {"type": kind_.replace("regular empty file",
                                                              "regular file"),
                                        "user": user, "group": group, "mode": mode,
                                        "sha256": None, "mtime": _float(mtime)}
            elif kind == "sha":
                digest, _, path = rest.partition("|")
                if path in state["paths"]:
                    state["paths"][path]["sha256"] = digest
            elif kind == "link":
                path, _, target = rest.partition("|")
                state.setdefault("links", {})[path] = target
            elif kind == "current":
                state["current"] = rest.rsplit("/", 1)[-1] or None
            elif kind == "release":
                state["releases"].append(rest)
            elif kind == "user":
                state["user"] = True
            elif kind == "group":
                state["group"] = True
            elif kind == "unit":  # systemctl show's ActiveState= and UnitFileState= lines
                name, _, value = rest.partition("=")
                if name == "ActiveState":
                    state["unit"]["active"] = value
                elif name == "UnitFileState":
                    state["unit"]["enabled"] = value
                elif name == "ActiveEnterTimestamp":
                    state["unit"]["started"] = unit_started(value)
                elif name == "NeedDaemonReload":
                    state["unit"]["need_reload"] = value == "yes"
            elif kind == "key":
                state["authorized_keys"].append(rest.strip())
        if basics:
            state["basics"] = NodeBasics().process(basics)
        return state


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
