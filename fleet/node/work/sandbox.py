"""The test sandbox on a node: a root front door that runs an agent's repository test command
in a transient systemd unit, and the client the agent's runtime calls (:func:`run_tests`).

The front door (``python3 -m fleet.node.work.sandbox serve --agent AGENT``) is started by the
root-owned socket ``fleet-sandbox-AGENT.socket`` (``/run/fleet-sandbox/AGENT.sock``, the
agent's, 0600; ``Accept=yes``: one short-lived instance per connection, the connection as its
stdin). It takes nothing from the agent but a workspace: the caller must be the agent's uid
(``SO_PEERCRED``), the request one small JSON object ``{"workspace": "work/w-<12 hex>"}``
(bounded before it is parsed), the workspace a directory of the agent's state dir reached
without following a symlink. What runs, and with which limits, comes from the root-owned policy
file ``/etc/fleet/AGENT/sandbox.json`` (:mod:`fleet.core.sandbox_policy`).

The command runs as the agent with ``systemd-run`` (:func:`run_argv`): the workspace is the
only writable place, ``/etc/fleet`` and every agent's state dir are hidden, CPU, memory, task
and time limits apply, and the network is the policy's allowlist only (``IPAddressDeny=any``).
Where the host cannot enforce a systemd guarantee, a stricter or a kernel one stands in:
no cgroup-v2 BPF firewall (systemd-nspawn, hybrid cgroups) -> ``PrivateNetwork=yes`` (no
network at all); no cgroup memory/pids controller -> ``LimitDATA=``/``LimitNPROC=`` (twice the
limits, a kernel bound) and the front door's own watch of the unit's cgroup
(:func:`cgroup_tasks`, :func:`cgroup_rss`), which stops the unit when it reaches them. Each
run is answered as a :class:`SandboxResult`, logged to the journal and appended to
``sandbox-runs.jsonl`` in the agent's state dir (root's, bounded, readable by the agent).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pwd
import re
import secrets
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bus.timestamps import utc_timestamp
from fleet.core.atomic import write_atomic_at
from fleet.core.errors import FleetError
from fleet.core.sandbox_policy import (
    DEFAULT_LIMITS,
    SandboxPolicy,
    SandboxPolicyError,
    policy_from_dict,
)
from fleet.core.validate import ValidationError, check_user_name

SOCKET_DIR = "/run/fleet-sandbox"
STATE_ROOT = "/var/lib/fleet"
ETC_ROOT = "/etc/fleet"
POLICY_FILE = "sandbox.json"
RECORDS_FILE = "sandbox-runs.jsonl"
RECORDS_MAX_BYTES = 256 * 1024
MAX_REQUEST = 1024
MAX_POLICY = 64 * 1024
REQUEST_TIMEOUT_S = 5.0
WORKSPACE_RE = re.compile(r"work/w-[0-9a-f]{12}", re.ASCII)
WORKSPACE_FORM = "work/w- and 12 lowercase hex digits, relative to the agent's state dir"
REASONS = ("passed", "failed", "timeout", "memory", "tasks", "killed", "refused")
SYSTEMD_RUN = "/usr/bin/systemd-run"
PYTHON = sys.executable  # the node's python3, which runs this front door
CURRENT_SITE = str(Path(__file__).parents[3])  # the release's site dir this module came from
SYSTEMCTL = "/usr/bin/systemctl"
WATCH_EVERY_S = 0.01  # a fork bomb under LimitNPROC= peaks for ~0.1 s, then dies out
MEMORY_EVERY = 5  # turns: resident memory is summed over /proc every 0.05 s
GRACE_S = 15  # past RuntimeMaxSec= the front door stops the unit itself
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/systemd")
HARDENING = (
    "UMask=0077", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "AmbientCapabilities=",
    "PrivateUsers=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
    "PrivateDevices=yes", "DevicePolicy=closed", "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
    "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible", "ProcSubset=pid",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "RemoveIPC=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources", "SystemCallErrorNumber=EPERM", "LimitCORE=0",
    "Nice=10")
"""The fleet's unit sandbox (``fleet/control/templates/sandbox.conf.j2``) where it fits a
test runner (``MemoryDenyWriteExecute=`` is left out: JITs and ffi callbacks need it)."""


class SandboxError(FleetError):
    """The sandbox could not run the test command (refused, unreachable, bad answer)."""

    hint = ("Check the agent's sandbox socket (`systemctl status fleet-sandbox-AGENT.socket`) "
            "and its journal.")


class RequestRefused(SandboxError):
    """The front door refused a request (wrong caller, bad request or workspace)."""


@dataclass(frozen=True)
class SandboxResult:
    """One run: ``status`` one of :data:`REASONS`, the command's exit status (None when it was
    stopped), wall time, the tail of its output, the unit and how the network was limited."""

    status: str
    exit_status: int | None
    duration_s: float
    output: str
    unit: str = ""
    network: str = ""
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> SandboxResult:
        """The result in an answer, checked field by field; else :class:`SandboxError`."""
        fields: dict[str, type | tuple[type, ...]] = {
            "status": str, "exit_status": (int, type(None)), "duration_s": (int, float),
            "output": str, "unit": str, "network": str, "error": str}
        if not isinstance(data, dict) or set(data) != set(fields):
            raise SandboxError(f"the sandbox answered {str(data)[:200]!r}, not a result")
        for name, kind in fields.items():
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise SandboxError(f"the sandbox's answer has a bad {name}: {data[name]!r}")
        if data["status"] not in REASONS:
            raise SandboxError(f"the sandbox's answer has an unknown status {data['status']!r}")
        return cls(**data)


def refused(error: str) -> SandboxResult:
    return SandboxResult("refused", None, 0.0, "", error=error)


# --- the request ---------------------------------------------------------------------------

def parse_request(raw: bytes) -> str:
    """The workspace named in ``raw`` (one JSON object ``{"workspace": "work/w-…"}``, at most
    :data:`MAX_REQUEST` bytes of printable ASCII); else :class:`RequestRefused`."""
    if len(raw) > MAX_REQUEST:
        raise RequestRefused(f"the request is longer than {MAX_REQUEST} bytes")
    text = raw.decode("ascii", errors="replace").strip()
    if not text or any(not " " <= char <= "~" for char in text):
        raise RequestRefused("the request is not one line of printable ASCII JSON")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise RequestRefused("the request is not JSON") from None
    if not isinstance(data, dict) or set(data) != {"workspace"}:
        raise RequestRefused('the request is not {"workspace": "work/w-…"}')
    workspace = data["workspace"]
    if not isinstance(workspace, str) or not WORKSPACE_RE.fullmatch(workspace):
        raise RequestRefused(f"workspace {str(workspace)[:80]!r} is not {WORKSPACE_FORM}")
    return workspace


def read_request(conn: socket.socket, deadline_s: float = REQUEST_TIMEOUT_S) -> bytes:
    """The request's bytes: up to a newline or the end, at most one byte past
    :data:`MAX_REQUEST` (so an oversize request is refused unread), within ``deadline_s``."""
    data = b""
    end = time.monotonic() + deadline_s
    while len(data) <= MAX_REQUEST and b"\n" not in data:
        left = end - time.monotonic()
        if left <= 0:
            raise RequestRefused(f"no complete request within {deadline_s:g} s")
        conn.settimeout(left)
        try:
            chunk = conn.recv(MAX_REQUEST + 1 - len(data))
        except TimeoutError:
            raise RequestRefused(f"no complete request within {deadline_s:g} s") from None
        if not chunk:
            break
        data += chunk
    return data


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def open_workspace(state_dir: str, workspace: str, uid: int) -> tuple[str, str]:
    """The workspace's path and identity (``DEV:INO`` of the directory checked): each
    component opened as a directory without following a symlink, owned by ``uid``; the path
    as the kernel names the directory opened. The agent can still rename it afterwards, so
    the unit checks the identity again before anything runs (:func:`enter`)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds: list[int] = []
    try:
        fds.append(os.open(state_dir, flags))
        for part in workspace.split("/"):
            try:
                fds.append(os.open(part, flags, dir_fd=fds[-1]))
            except OSError as exc:
                raise RequestRefused(f"workspace {workspace}: {part} is not a directory of "
                                     f"the agent's ({exc.strerror})") from None
            if os.fstat(fds[-1]).st_uid != uid:
                raise RequestRefused(f"workspace {workspace}: {part} is not the agent's")
        path = os.readlink(f"/proc/self/fd/{fds[-1]}")
        checked = os.fstat(fds[-1])
        identity = f"{checked.st_dev}:{checked.st_ino}"
    finally:
        for fd in fds:
            os.close(fd)
    if path != f"{state_dir}/{workspace}":
        raise RequestRefused(f"workspace {workspace} resolves to {path!r}, outside the "
                             "agent's state dir")
    return path, identity


MOVED_EXIT = 125
"""What :func:`enter` exits with when the workspace the unit was given is not the directory
the front door checked (the agent swapped it meanwhile): nothing of the repository ran."""
MOVED = "the workspace was replaced after it was checked; nothing ran"


def enter(identity: str, argv: Sequence[str]) -> int:
    """Inside the unit, as the agent: run ``argv`` only if the working directory systemd set
    up (``WorkingDirectory=``, bound by ``BindPaths=``) is the directory the front door
    checked (``DEV:INO``); a symlink or another directory renamed into its place between the
    check and the unit's start is refused here, before any of the repository's code runs."""
    here = os.stat(".")
    if f"{here.st_dev}:{here.st_ino}" != identity or not argv:
        print(f"fleet sandbox: {MOVED}", file=sys.stderr, flush=True)
        return MOVED_EXIT
    os.execvp(argv[0], list(argv))


# --- the run -------------------------------------------------------------------------------

def firewall_supported() -> bool:
    """Whether systemd can enforce ``IPAddressDeny=`` here: only on the unified cgroup-v2
    hierarchy (not on hybrid or legacy hosts, such as our systemd-nspawn lab nodes)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts)
    except OSError:
        return False


def _status_fields(pid: str) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)
    except OSError:
        return {}


def uid_tasks(uid: int) -> int:
    """How many tasks (threads) run as ``uid`` now (what ``RLIMIT_NPROC`` counts)."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            fields = _status_fields(pid)
            if fields.get("Uid", "").split("\t")[:1] == [str(uid)]:
                count += int(fields.get("Threads", "1"))
    return count


def unit_cgroup(unit: str) -> str | None:
    """The cgroup directory of a running system unit (unified, hybrid or legacy layout)."""
    for root in CGROUP_ROOTS:
        path = f"{root}/system.slice/{unit}"
        if os.path.exists(f"{path}/cgroup.procs"):
            return path
    return None


def _ids(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii") as ids:
            return ids.read().split()
    except OSError:
        return []


def cgroup_tasks(cgroup: str) -> int:
    """The threads in ``cgroup`` now (``cgroup.threads``; its processes where there is none)."""
    threads = _ids(f"{cgroup}/cgroup.threads")
    return len(threads) if threads else len(_ids(f"{cgroup}/cgroup.procs"))


def cgroup_rss(cgroup: str) -> int:
    """The resident memory of the processes in ``cgroup`` now, in bytes."""
    return sum(int(_status_fields(pid).get("VmRSS", "0 kB").split()[0]) * 1024
               for pid in _ids(f"{cgroup}/cgroup.procs"))


def run_argv(policy: SandboxPolicy, agent: str, unit: str, workspace: str, *,
             nproc_limit: int, firewall: bool, identity: str = "") -> list[str]:
    """The ``systemd-run`` command line of one run: after ``--``, :func:`enter` checking the
    workspace is still the directory ``identity`` names, then the policy's argv."""
    memory = policy.memory_max_mib
    props = [
        f"User={agent}", f"Group={agent}", f"WorkingDirectory={workspace}",
        f"Environment=HOME={workspace}", "Environment=LANG=C.UTF-8",
        f"CPUQuota={policy.cpu_quota_percent}%", f"MemoryMax={memory}M", "MemorySwapMax=0",
        f"TasksMax={policy.tasks_max}", f"RuntimeMaxSec={policy.runtime_max_s}",
        f"LimitNPROC={nproc_limit}", f"LimitDATA={2 * memory}M",
        f"TemporaryFileSystem={STATE_ROOT}:ro", f"TemporaryFileSystem={ETC_ROOT}:ro",
        f"BindPaths={workspace}", f"ReadWritePaths={workspace}",
        "IPAddressDeny=any", *(f"IPAddressAllow={item.ip}" for item in policy.allow),
        *HARDENING]
    if not firewall or not policy.allow:
        props.append("PrivateNetwork=yes")
    props.append(f"Environment=PYTHONPATH={CURRENT_SITE}")
    argv = [SYSTEMD_RUN, "--wait", "--pipe", "--quiet", "--unit", unit]
    for prop in props:
        argv += ["-p", prop]
    return [*argv, "--", PYTHON, "-m", "fleet.node.work.sandbox", "enter", identity, "--",
            *policy.argv]


class _Tail:
    """The last ``limit`` bytes read from a pipe (read in a thread until its end)."""

    def __init__(self, pipe: Any, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: Any) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            self.data += chunk
            del self.data[:-self.limit]

    def text(self) -> str:
        self.thread.join(timeout=5)
        return bytes(self.data[-self.limit:]).decode("utf-8", errors="replace")


def _systemctl(*args: str) -> str:
    done = subprocess.run([SYSTEMCTL, *args], capture_output=True, text=True, timeout=30,
                          check=False, stdin=subprocess.DEVNULL)
    return done.stdout


def unit_outcome(unit: str, returncode: int) -> tuple[str, int | None]:
    """The reason and exit status systemd recorded for the finished ``unit`` (a successful
    unit is already gone: passed when ``systemd-run`` exited 0, else it could not start it),
    then the unit is reset so nothing of it lingers."""
    shown = dict(line.split("=", 1) for line in _systemctl(
        "show", unit, "-p", "LoadState", "-p", "Result", "-p", "ExecMainCode",
        "-p", "ExecMainStatus").splitlines() if "=" in line)
    if shown.get("LoadState") == "loaded":
        _systemctl("reset-failed", unit)
    result, code = shown.get("Result", "success"), shown.get("ExecMainCode", "0")
    status = int(shown.get("ExecMainStatus", "0") or 0)
    if result == "success":
        return ("passed", 0) if returncode == 0 else ("failed", returncode)
    if result == "timeout":
        return "timeout", None
    if result == "oom-kill":
        return "memory", None
    if code == "1":  # CLD_EXITED
        return "failed", status
    return "killed", None


def run_sandboxed(policy: SandboxPolicy, agent: str, uid: int, workspace: str,
                  identity: str = "") -> SandboxResult:
    """Run the policy's command in ``workspace`` as ``agent`` under every limit; the front
    door stops the unit itself when it outgrows its task or memory limit or its time."""
    unit = f"fleet-sandbox-{agent}-{secrets.token_hex(6)}.service"
    firewall = firewall_supported()
    argv = run_argv(policy, agent, unit, workspace, firewall=firewall, identity=identity,
                    nproc_limit=uid_tasks(uid) + 2 * policy.tasks_max)
    network = ("allowlist" if policy.allow else "none") if firewall else "none"
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    tail = _Tail(proc.stdout, policy.output_max_bytes)
    stopped = ""
    deadline = start + policy.runtime_max_s + GRACE_S
    cgroup: str | None = None
    for turn in itertools.count():
        if proc.poll() is not None:
            break
        cgroup = cgroup or unit_cgroup(unit)
        if cgroup and cgroup_tasks(cgroup) >= policy.tasks_max:
            stopped = "tasks"
        elif cgroup and turn % MEMORY_EVERY == 0 and \
                cgroup_rss(cgroup) > policy.memory_max_mib * 1024 * 1024:
            stopped = "memory"
        elif time.monotonic() > deadline:
            stopped = "timeout"
        if stopped:
            _systemctl("kill", "--signal=SIGKILL", unit)
            proc.wait(timeout=60)
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=WATCH_EVERY_S)
    duration = round(time.monotonic() - start, 3)
    reason, exit_status = unit_outcome(unit, proc.wait())
    if stopped:
        reason, exit_status = stopped, None
    output = tail.text()
    if exit_status == MOVED_EXIT and output.startswith(f"fleet sandbox: {MOVED}"):
        return SandboxResult("refused", None, duration, output, unit=unit, network=network,
                             error=MOVED)
    return SandboxResult(reason, exit_status, duration, output, unit=unit,
                         network=network)


def load_policy(etc_dir: str) -> SandboxPolicy:
    """The root-owned policy file of the agent (refused when anyone else could change it)."""
    fd = os.open(f"{etc_dir}/{POLICY_FILE}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as policy_file:
        info = os.fstat(policy_file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise SandboxPolicyError(f"{etc_dir}/{POLICY_FILE} is not root's own file")
        raw = policy_file.read(MAX_POLICY + 1)
    if len(raw) > MAX_POLICY:
        raise SandboxPolicyError(f"{etc_dir}/{POLICY_FILE} is longer than {MAX_POLICY} bytes")
    return policy_from_dict(json.loads(raw))


def record(state_dir: str, line: dict[str, Any], max_bytes: int = RECORDS_MAX_BYTES,
           owner: int = 0) -> None:
    """Append ``line`` to the agent's run records: root's file in its state dir, opened
    without following a symlink and only when it is a single-link regular file of root's;
    past ``max_bytes`` the older half is dropped (written aside, then moved over it). ``owner``:
    the uid the file must have (root's; another in tests)."""
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    dirfd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(RECORDS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dirfd)
        with os.fdopen(fd, "r+b") as records:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != owner:
                raise OSError(f"{state_dir}/{RECORDS_FILE} is not root's own regular file")
            if info.st_size + len(data) <= max_bytes:
                records.write(data)
                return
            records.seek(max(0, info.st_size - max_bytes // 2))
            kept = records.read(max_bytes // 2).split(b"\n", 1)[-1]
        write_atomic_at(dirfd, RECORDS_FILE, kept + data)
    finally:
        os.close(dirfd)


def handle(conn: socket.socket, agent: str, uid: int, *, state_root: str = STATE_ROOT,
           etc_root: str = ETC_ROOT) -> SandboxResult:
    """One connection: caller, request and workspace checked in that order, then the run."""
    caller = peer_uid(conn)
    if caller != uid:
        return refused(f"uid {caller} is not {agent}'s (uid {uid})")
    try:
        workspace = parse_request(read_request(conn))
        path, identity = open_workspace(f"{state_root}/{agent}", workspace, uid)
        policy = load_policy(f"{etc_root}/{agent}")
    except (RequestRefused, SandboxPolicyError) as exc:
        return refused(str(exc))
    except (OSError, ValueError) as exc:
        return refused(f"the sandbox policy cannot be read: {exc}")
    return run_sandboxed(policy, agent, uid, path, identity)


def drain(conn: socket.socket, limit: int = 64 * 1024, deadline_s: float = 1.0) -> None:
    """Read what is left of a refused request (bounded), so closing the connection does not
    reset it before the caller has read the answer."""
    end = time.monotonic() + deadline_s
    left = limit
    while left > 0 and (wait := end - time.monotonic()) > 0:
        conn.settimeout(wait)
        chunk = conn.recv(min(left, 65536))
        if not chunk:
            return
        left -= len(chunk)


def serve(agent: str, conn: socket.socket, *, state_root: str = STATE_ROOT,
          etc_root: str = ETC_ROOT) -> SandboxResult:
    """Answer one connection (the front door's whole life) and record the run."""
    uid = pwd.getpwnam(check_user_name(agent)).pw_uid
    result = handle(conn, agent, uid, state_root=state_root, etc_root=etc_root)
    answer = (json.dumps(result.to_dict()) + "\n").encode()
    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)
        drain(conn)
    except OSError:
        pass
    line = {"time": utc_timestamp(), "agent": agent,
            **{key: value for key, value in result.to_dict().items() if key != "output"},
            "output_bytes": len(result.output.encode())}
    print(json.dumps(line, sort_keys=True), file=sys.stderr, flush=True)  # the journal
    try:
        record(f"{state_root}/{agent}", line)
    except OSError as exc:
        print(f"sandbox: run not recorded in the state dir: {exc}", file=sys.stderr)
    return result


# --- the client ----------------------------------------------------------------------------

def _timeout_for(agent: str) -> float:
    try:
        runtime = load_policy(f"{ETC_ROOT}/{agent}").runtime_max_s
    except (OSError, ValueError, SandboxPolicyError):
        runtime = DEFAULT_LIMITS["runtime_max_s"]
    return runtime + GRACE_S + 30


def run_tests(workspace_rel: str, *, agent: str | None = None, socket_path: str | None = None,
              timeout: float | None = None) -> SandboxResult:
    """Run the repository's test command in ``workspace_rel`` (``work/w-…``, relative to the
    agent's state dir) through the agent's sandbox; :class:`SandboxError` when it cannot."""
    name = agent or os.environ.get("FLEET_AGENT", "")
    try:
        check_user_name(name)
    except ValidationError as exc:
        raise SandboxError(f"no agent to run tests for: {exc}") from None
    path = socket_path or f"{SOCKET_DIR}/{name}.sock"
    request = (json.dumps({"workspace": workspace_rel}) + "\n").encode()
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout or _timeout_for(name))
            conn.connect(path)
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            size = 0
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > 16 * 1024 * 1024:
                    raise SandboxError("the sandbox's answer is longer than 16 MiB")
    except OSError as exc:
        raise SandboxError(f"the sandbox at {path} could not be reached: {exc}") from None
    try:
        result = SandboxResult.from_dict(json.loads(b"".join(chunks)))
    except ValueError:
        raise SandboxError(f"the sandbox at {path} answered no result (busy or "
                           "stopped)") from None
    if result.status == "refused":
        raise RequestRefused(f"the sandbox refused the run: {result.error}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``serve --agent AGENT``: answer the connection on stdin (socket activation);
    ``enter DEV:INO -- ARGV``: inside the unit, run ARGV in the checked workspace only."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["enter"] and args_list[2:3] == ["--"]:
        return enter(args_list[1], args_list[3:])
    parser = argparse.ArgumentParser(prog="python3 -m fleet.node.work.sandbox")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="answer one connection on stdin")
    serve_parser.add_argument("--agent", required=True)
    args = parser.parse_args(args_list)
    with socket.socket(fileno=os.dup(0)) as conn:
        result = serve(args.agent, conn)
    return 0 if result.status != "refused" else 1


if __name__ == "__main__":
    sys.exit(main())
