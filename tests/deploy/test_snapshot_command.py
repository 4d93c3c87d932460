"""The node snapshot's command (``NodeState``) on a real shell: the builtin-heavy command
parses to exactly what the earlier one (sed, basename, awk, two ``systemctl show`` calls)
parsed to, for a temp tree of files, links, releases, odd authorized_keys files and lock
files; ``systemctl``, ``df`` and ``date`` are stubs earlier on ``PATH`` printing what the real
ones print (``systemctl show``: a block per unit named, in order, a blank line between)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploys.facts import NodeSnapshot, NodeState

SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]
UNIT = "fleet-agent-a.service"
TIMERS = ("fleet-schedule-a_x.timer", "fleet-sandbox-a.socket", "fleet-schedule-a_gone.timer",
          "fleet-runtime-a.service")
UNITS = {  # what the stub systemd knows; any other unit is shown as not found
    UNIT: {"ActiveState": "active", "UnitFileState": "enabled",
           "ActiveEnterTimestamp": "Sat 2025-11-29 00:33:20.500000 UTC",
           "NeedDaemonReload": "no"},
    "fleet-schedule-a_x.timer": {"ActiveState": "active", "UnitFileState": "enabled",
                                 "ActiveEnterTimestamp": "Sat 2025-11-29 00:30:00.000000 UTC",
                                 "NeedDaemonReload": "yes"},
    "fleet-sandbox-a.socket": {"ActiveState": "failed", "UnitFileState": "disabled",
                               "ActiveEnterTimestamp": "", "NeedDaemonReload": "no"},
    "fleet-runtime-a.service": {"ActiveState": "activating", "UnitFileState": "static",
                                "ActiveEnterTimestamp": "", "NeedDaemonReload": "no"},
}
KEY_LINES = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBff3HrNM0Ju0S op@laptop", "", "   ",
    "ssh-ed25519 AAAAtrailing op@x   ", "-----BEGIN not a key", "-n", "-e \\t",
    "back\\slash \\\\ \\n \\c end", "key|path|/etc/x|regular file|root|root|644|0",
    "percent %s %d %%", "tab\tinside", "cr at end\r", "  leading spaces",
    "command=\"echo $(id) `id` 'q'\" ssh-rsa AAAA x", "x" * 70_000, "",
]

SYSTEMCTL = """#!{python}
# systemctl show UNIT... [-p PROP]... [--timestamp=us+utc], as systemd 252 prints it
import json, os, sys
args = sys.argv[1:]
if os.environ.get("STUB_SYSTEMD") == "absent":
    sys.exit("System has not been booted with systemd as init system (PID 1). Can't operate.")
assert args and args[0] == "show", args
props, names, rest = [], [], iter(args[1:])
for arg in rest:
    if arg == "-p":
        props.append(next(rest))
    elif not arg.startswith("-"):
        names.append(arg)
order = ["Id", "ActiveState", "UnitFileState", "ActiveEnterTimestamp", "NeedDaemonReload"]
if os.environ.get("STUB_ORDER") == "reversed":
    order.reverse()
units = json.loads(os.environ["STUB_UNITS"])
blocks = []
for name in names:
    known = units.get(name, {{"ActiveState": "inactive", "UnitFileState": "",
                             "ActiveEnterTimestamp": "", "NeedDaemonReload": "no"}})
    values = {{"Id": name, **known}}
    blocks.append("".join(f"{{p}}={{values[p]}}\\n" for p in order if p in props))
sys.stdout.write("\\n".join(blocks))
"""


def reference_command(paths: list[str], user: str, unit: str, current: str,
                      releases_dir: str, keys_file: str, lock_dir: str | None = None,
                      schedule_glob: str = "", timers: tuple[str, ...] = (),
                      links: tuple[str, ...] = ()) -> str:
    """``NodeState.command`` (with ``NodeBasics.command``) as it was before it shed its
    processes (commit 224f831): the reference the new command must parse the same as."""
    quoted = " ".join(shlex.quote(path) for path in paths)
    basics = []
    if lock_dir:
        lock = shlex.quote(f"{lock_dir}/owner")
        inner = "; ".join([
            "(. /etc/os-release 2>/dev/null; echo \"os=$ID\"; echo \"os_like=$ID_LIKE\")",
            "if [ -d /run/systemd/system ]; then echo systemd=yes; else echo systemd=no; fi",
            "echo \"python=$(python3 -V 2>/dev/null)\"",
            "echo \"free_kb=$(df -Pk /opt 2>/dev/null | awk 'NR==2 {print $4}')\"",
            "echo \"epoch=$(date +%s.%N)\"",
            f"echo \"lock=$(cat {lock} 2>/dev/null)\"",
        ])
        basics = [f"({inner}) | sed 's/^/basics|/'"]
    schedules = [f"for f in {shlex.quote(schedule_glob)}*; do [ -e \"$f\" ] && "
                 "echo \"schedule|$f\"; done"] if schedule_glob else []
    if timers:
        schedules.append(f"systemctl show {' '.join(map(shlex.quote, timers))} -p Id "
                         "-p ActiveState -p UnitFileState | sed 's/^/timer|/'")
    return "; ".join([
        f"stat -c 'path|%n|%F|%U|%G|%a|%.9Y' -- {quoted} 2>/dev/null",
        f"(for p in {quoted}; do [ -f \"$p\" ] && set -- \"$@\" \"$p\"; done; "
        "[ $# -eq 0 ] || sha256sum -- \"$@\") | sed 's/^/sha|/; s/  /|/'",
        f"echo \"current|$(readlink {shlex.quote(current)} 2>/dev/null)\"",
        *(f"[ -L {shlex.quote(link)} ] && printf 'link|%s|%s\\n' {shlex.quote(link)} "
          f"\"$(readlink -- {shlex.quote(link)})\"" for link in links),
        f"for d in {shlex.quote(releases_dir)}/*/site; do [ -d \"$d\" ] && "
        "echo \"release|$(basename \"$(dirname \"$d\")\")\"; done",
        f"getent passwd {shlex.quote(user)} >/dev/null && echo user",
        f"getent group {shlex.quote(user)} >/dev/null && echo group",
        f"systemctl show {shlex.quote(unit)} --timestamp=us+utc -p ActiveState "
        "-p UnitFileState -p ActiveEnterTimestamp -p NeedDaemonReload | sed 's/^/unit|/'",
        f"sed 's/^/key|/' {shlex.quote(keys_file)} 2>/dev/null",
        *schedules,
        *basics,
        "true",
    ])


def stub_bin(folder: Path, df_output: str) -> Path:
    """``systemctl``, ``df`` and ``date`` stubs (the rest are the real tools)."""
    folder.mkdir()
    (folder / "systemctl").write_text(SYSTEMCTL.format(python=sys.executable))
    (folder / "df.out").write_text(df_output)
    (folder / "df").write_text(f"#!/bin/sh\ncat {shlex.quote(str(folder / 'df.out'))}\n")
    (folder / "date").write_text("#!/bin/sh\necho 1764290000.250000000\n")
    for name in ("systemctl", "df", "date"):
        (folder / name).chmod(0o755)
    return folder


def tree(root: Path, keys: str | None, lock: str | None, schedules: bool) -> dict[str, Any]:
    """A node's worth of files under ``root``; the snapshot arguments that read it."""
    releases = root / "opt" / "releases"
    for name in ("444a224b3f00", "555b", "back\\slash", "-n", "trailing\n"):
        (releases / name / "site").mkdir(parents=True)
    (releases / "no-site").mkdir()
    (releases / "site-is-a-file").mkdir()
    (releases / "site-is-a-file" / "site").write_text("x")
    (releases / ".unpack-666c" / "site").mkdir(parents=True)
    (root / "opt" / "current").symlink_to("releases/444a224b3f00")
    etc = root / "etc" / "fleet" / "a"
    etc.mkdir(parents=True)
    (etc / "config.json").write_text('{"a": 1}\n')
    (etc / "env").write_text("")
    (etc / "two  spaces").write_text("x")
    (etc / "back\\slash").write_text("y")
    (etc / "$(touch pwned) 'q'").write_text("z")
    (etc / "ship").symlink_to("/nowhere/dangling")
    (etc / "ship-ok").symlink_to(etc / "config.json")
    units = root / "units"
    units.mkdir()
    if schedules:
        (units / "fleet-schedule-a_x.timer").write_text("")
        (units / "fleet-schedule-a_old.service").write_text("")
    keys_file = root / "home" / "op" / ".ssh" / "authorized_keys"
    keys_file.parent.mkdir(parents=True)
    if keys == "directory":
        keys_file.mkdir()
    elif keys is not None:
        keys_file.write_text(keys, newline="")
    lock_dir = root / "run" / "fleet-deploy.lock"
    lock_dir.mkdir(parents=True)
    if lock == "directory":
        (lock_dir / "owner").mkdir()
    elif lock is not None:
        (lock_dir / "owner").write_text(lock)
    paths = [str(path) for path in sorted(root.rglob("*")) if "releases" not in path.parts]
    return {"paths": [*paths, str(root / "missing")], "current": str(root / "opt" / "current"),
            "releases_dir": str(releases), "keys_file": str(keys_file),
            "lock_dir": str(lock_dir), "schedule_glob": str(units / "fleet-schedule-a_"),
            "links": (str(etc / "ship"), str(etc / "ship-ok"), str(etc / "missing"))}


def snapshot(shell: str, command: str, env: dict[str, str], cwd: Path) -> NodeSnapshot:
    done = subprocess.run([shell, "-c", command], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    state = NodeState().process(done.stdout.splitlines())
    if "basics" in state:  # the node's clock minus this one's: read at different times
        assert state["basics"]["skew_s"] is not None
        state["basics"]["skew_s"] = 0.0
    return state


DF = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n" \
     "/dev/sda1        102400000  20480000  73796100      22% /\n"
KEYS = "\n".join(KEY_LINES) + "\n"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", [
    dict(),
    dict(keys=KEYS.rstrip("\n")),  # a last line without a newline: read as if it had one
    dict(keys=KEYS.rstrip("\n"), schedules=False),
    dict(keys=KEYS.rstrip("\n"), schedules=False, timers=()),
    dict(keys=KEYS.rstrip("\n"), schedules=False, timers=(), lock_dir=False),
    dict(keys="", lock="controller:1234:run-id 1764290000"),
    dict(keys="\n\n", lock="line one\nos=evil\n\n\\tlast\\c rest\n\n"),
    dict(keys=None, lock="directory", systemd="absent"),
    dict(keys="directory", order="reversed", user="root"),
    dict(df=""), dict(df="Filesystem only\n"), dict(df="a b c\n"),
    dict(df="h\n\tdev  1\t2   3\t\t4 5\nthird 1 2 3 9\n"), dict(df="h\n\n"),
    dict(df="h\n/dev/x 1 2 1*3\n"),  # awk does not expand globs (./123): neither may the shell
    dict(user="$(touch pwned)", unit="x'; touch pwned; '.service"),
], ids=lambda case: ",".join(f"{key}={str(value)[:12]!r}" for key, value in case.items()))
def test_the_snapshot_parses_as_the_reference_command_did(tmp_path: Path, shell: str,
                                                           case: dict[str, Any]) -> None:
    root = tmp_path / "node"
    args = tree(root, keys=case.get("keys", KEYS), lock=case.get("lock"),
                schedules=case.get("schedules", True))
    if case.get("lock_dir", True) is False:
        args.pop("lock_dir")
    args.update(user=case.get("user", "nobody-here"), unit=case.get("unit", UNIT),
                timers=case.get("timers", TIMERS))
    env = {**os.environ, "STUB_UNITS": json.dumps(UNITS),
           "STUB_SYSTEMD": case.get("systemd", "running"), "STUB_ORDER": case.get("order", ""),
           "PATH": f"{stub_bin(tmp_path / 'bin', case.get('df', DF))}:{os.environ['PATH']}"}
    (tmp_path / "123").write_text("")  # what the df line's 1*3 would expand to (in the cwd)
    keys = case.get("keys", KEYS)
    unfinished = keys not in (None, "", "directory") and not keys.endswith("\n")
    keys_file = Path(args["keys_file"])
    if unfinished:  # the reference (sed) glued the next output line to a last line without a
        keys_file.write_text(keys + "\n", newline="")  # newline: it is read as if it had one
    reference = snapshot(shell, reference_command(**args), env, tmp_path)
    keys_file.write_text(keys, newline="") if unfinished else None
    new = snapshot(shell, NodeState().command(**args), env, tmp_path)
    if unfinished:  # the file itself differs by its newline (its sha256, maybe its mtime)
        reference["paths"][str(keys_file)] = new["paths"][str(keys_file)]
    assert new == reference
    assert not list(tmp_path.rglob("pwned"))
    if case.get("systemd") != "absent":
        assert len(new["schedules"]["timers"]) == len(args["timers"])
    if case.get("lock_dir", True) is not False:
        assert new["basics"]["os"] == reference["basics"]["os"] != ""


def test_the_snapshot_reads_what_it_was_given(tmp_path: Path) -> None:
    """The comparison is not between two empty snapshots: the new command reads each part."""
    args = tree(tmp_path / "node", keys=KEYS, lock="controller:1:run 1764290000",
                schedules=True)
    env = {**os.environ, "STUB_UNITS": json.dumps(UNITS),
           "PATH": f"{stub_bin(tmp_path / 'bin', DF)}:{os.environ['PATH']}"}
    state = snapshot("sh", NodeState().command(**args, user="root", unit=UNIT, timers=TIMERS),
                     env, tmp_path)
    etc = tmp_path / "node" / "etc" / "fleet" / "a"
    assert state["paths"][str(etc / "two  spaces")]["sha256"] == (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
    assert state["paths"][str(etc / "env")]["type"] == "regular file"
    assert state["current"] == "444a224b3f00"
    assert sorted(state["releases"]) == ["-n", "444a224b3f00", "555b", "back\\slash",
                                         "trailing"]
    assert state["links"] == {str(etc / "ship"): "/nowhere/dangling",
                              str(etc / "ship-ok"): str(etc / "config.json")}
    assert state["user"] and state["group"]
    assert state["unit"] == {"active": "active", "enabled": "enabled",
                             "started": 1764376400.5, "need_reload": False}
    assert state["authorized_keys"] == [line.strip() for line in KEY_LINES]
    assert state["schedules"] == {
        "files": [str(tmp_path / "node" / "units" / name) for name in
                  ("fleet-schedule-a_old.service", "fleet-schedule-a_x.timer")],
        "timers": {"fleet-schedule-a_x.timer": {"active": "active", "enabled": "enabled"},
                   "fleet-sandbox-a.socket": {"active": "failed", "enabled": "disabled"},
                   "fleet-schedule-a_gone.timer": {"active": "inactive", "enabled": ""},
                   "fleet-runtime-a.service": {"active": "activating", "enabled": "static"}}}
    basics = state["basics"]
    assert (basics["free_mb"], basics["lock"]) == (73796100 // 1024,
                                                   "controller:1:run 1764290000")


def test_the_snapshot_runs_no_per_line_or_per_release_tools() -> None:
    """sed, awk, basename and dirname each cost a process; the shell's builtins do their
    work, and one ``systemctl show`` reads the unit and the timers. One sed reads the keys
    file: a shell loop reads a byte per system call (3.5 s for a 4 MB file, sed 14 ms)."""
    command = NodeState().command(paths=["/opt/fleet"], user="a", unit=UNIT,
                                  current="/opt/fleet/current",
                                  releases_dir="/opt/fleet/releases",
                                  keys_file="/root/.ssh/authorized_keys",
                                  lock_dir="/run/fleet-deploy.lock",
                                  schedule_glob="/etc/systemd/system/fleet-schedule-a_",
                                  timers=TIMERS)
    for tool in ("awk ", "basename ", "dirname "):
        assert tool not in command, tool
    assert command.count("sed ") == 1 and "sed -e 's/^/key|/'" in command
    assert command.count("systemctl show") == 1


@pytest.mark.parametrize("kind", ["fifo", "large", "link"])
def test_the_keys_file_is_read_only_when_it_is_a_regular_file(tmp_path: Path,
                                                              kind: str) -> None:
    """A FIFO at the keys path is skipped (reading it would hang the deploy), a symlink to a
    regular file is read, and 50,000 keys are all read (one sed, not a line at a time)."""
    args = tree(tmp_path / "node", keys=None, lock=None, schedules=False)
    keys_file = Path(args["keys_file"])
    lines = [f"ssh-ed25519 AAAAC3key{index} op{index}" for index in range(50_000)]
    if kind == "fifo":
        os.mkfifo(keys_file)
    elif kind == "large":
        keys_file.write_text("\n".join(lines) + "\n")
    else:
        target = tmp_path / "elsewhere"
        target.write_text(lines[0])
        keys_file.symlink_to(target)
    env = {**os.environ, "STUB_UNITS": json.dumps(UNITS),
           "PATH": f"{stub_bin(tmp_path / 'bin', DF)}:{os.environ['PATH']}"}
    state = snapshot("sh", NodeState().command(**args, user="root", unit=UNIT, timers=TIMERS),
                     env, tmp_path)  # within snapshot()'s timeout
    assert state["authorized_keys"] == {"fifo": [], "large": lines, "link": lines[:1]}[kind]
    assert state["basics"]["os"] != ""  # the output after the keys is all there


@pytest.mark.parametrize("shell", SHELLS)
def test_bytes_that_are_not_utf8_reach_the_controller_as_question_marks(
        tmp_path: Path, shell: str) -> None:
    """pyinfra decodes a command's output as strict UTF-8: a Latin-1 comment in the keys
    file, a release folder or a lock owner with such bytes must not fail the snapshot. Every
    byte over 127 arrives as ``?``; the rest of the snapshot is as it was."""
    args = tree(tmp_path / "node", keys=None, lock=None, schedules=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBff3HrNM0Ju0S"
    Path(args["keys_file"]).write_bytes(f"{key} jos\xe9@x\n\xff\xfe\n".encode("latin-1"))
    os.makedirs(os.fsencode(args["releases_dir"]) + b"/caf\xe9/site")
    with open(os.fsencode(args["lock_dir"]) + b"/owner", "wb") as owner:
        owner.write(b"ctl:\xff:run 1764290000")
    env = {**os.environ, "STUB_UNITS": json.dumps(UNITS),
           "PATH": f"{stub_bin(tmp_path / 'bin', DF)}:{os.environ['PATH']}"}
    done = subprocess.run([shell, "-c", NodeState().command(**args, user="root", unit=UNIT,
                                                            timers=TIMERS)],
                          capture_output=True, env=env, cwd=tmp_path, timeout=60, check=True)
    state = NodeState().process(done.stdout.decode("utf-8").splitlines())  # strict
    assert state["authorized_keys"] == [f"{key} jos?@x", "??"]
    assert "caf?" in state["releases"] and "444a224b3f00" in state["releases"]
    assert state["basics"]["lock"] == "ctl:?:run 1764290000"
    assert state["unit"]["active"] == "active" and state["current"] == "444a224b3f00"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.binary(max_size=300), release=st.binary(min_size=1, max_size=20).filter(
    lambda name: b"/" not in name and b"\0" not in name and name not in (b".", b"..")),
       owner=st.binary(max_size=60).filter(lambda text: b"\0" not in text))
def test_any_bytes_the_snapshot_reads_decode_as_strict_utf8(
        tmp_path_factory: pytest.TempPathFactory, keys: bytes, release: bytes,
        owner: bytes) -> None:
    """For any bytes in the keys file, a release folder's name and the lock owner, the
    snapshot's output is strict UTF-8 (as pyinfra decodes it), with every part there."""
    tmp_path = tmp_path_factory.mktemp("node")
    args = tree(tmp_path / "node", keys=None, lock=None, schedules=False)
    Path(args["keys_file"]).write_bytes(keys)
    with contextlib.suppress(FileExistsError):
        os.makedirs(os.fsencode(args["releases_dir"]) + b"/" + release + b"/site")
    with open(os.fsencode(args["lock_dir"]) + b"/owner", "wb") as lock_owner:
        lock_owner.write(owner)
    env = {**os.environ, "STUB_UNITS": json.dumps(UNITS),
           "PATH": f"{stub_bin(tmp_path / 'bin', DF)}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", NodeState().command(**args, user="root", unit=UNIT)],
                          capture_output=True, env=env, cwd=tmp_path, timeout=60, check=True)
    state = NodeState().process(done.stdout.decode("utf-8").splitlines())  # strict
    assert "444a224b3f00" in state["releases"] and state["current"] == "444a224b3f00"
    assert state["unit"]["active"] == "active" and "basics" in state
