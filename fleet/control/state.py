"""An agent's state on its node, from the controller: list its snapshots, back one up to a
file here, restore one (from the node's snapshots or from a backup file).

The node does the work (``fleet-nodectl state ...``, :mod:`fleet.node.nodectl`); this module
reaches it over SSH with the deploy's settings (:func:`fleet.control.status.ssh_command`: the
registry's key, host keys pinned), through ``sudo -n`` when the login user is not root.
A backup is the node's snapshot as a tar (``manifest.json``, ``data/...``), written 0600 and
checked against the manifest's sha256s once it is here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from fleet.control.status import as_root
from fleet.core.atomic import replace_atomic
from fleet.core.errors import StateError
from fleet.core.registry import Agent, Registry
from fleet.node.nodectl import SNAPSHOT_ID_FORM, SNAPSHOT_ID_RE, Manifest, Restored, SnapshotInfo

NODECTL = "/opt/fleet/bin/fleet-nodectl"  # deploys.context.NODECTL
SSH_TIMEOUT = 10.0
COMMAND_TIMEOUT = 600.0  # a restore waits for the agent's health, a backup for its bytes
HEALTH_TIMEOUT = 20


@dataclass(frozen=True)
class Backup:
    """A backup pulled to the controller: its file, the snapshot id, its manifest."""

    path: Path
    snapshot: str
    manifest: Manifest
    sha256: str  # of the tar file


def remote(agent: Agent, registry: Registry, args: list[str]) -> list[str]:
    """The argv running ``fleet-nodectl ARGS`` on ``agent``'s node as root: ``sudo -n`` when
    the login user is not root (the registry's ``fleet.become``)."""
    return as_root(agent, registry, [NODECTL, *args], SSH_TIMEOUT)


def run_nodectl(agent: Agent, registry: Registry, args: list[str],
                stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> bytes:
    """Run ``fleet-nodectl ARGS`` on the node; its stdout (unless sent to ``stdout``).
    Raises :class:`StateError` with what the node said when it fails."""
    try:
        done = subprocess.run(remote(agent, registry, args), stdin=stdin or subprocess.DEVNULL,
                              stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise StateError(f"{agent.name}: fleet-nodectl {args[0]} {args[1]} took more than "
                         f"{COMMAND_TIMEOUT:.0f} s", hint="Check the node with `fleet status`."
                         ) from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        reason, hint = failure(agent, args, done.returncode, said[-1] if said else "")
        raise StateError(f"{agent.name}: fleet-nodectl {args[0]} {args[1]} failed: {reason}",
                         hint=hint)
    return done.stdout or b""


REFUSAL = "fleet-nodectl state: "  # how the node's refusals begin (nothing changed there)
SSH_FAILED = 255  # ssh's own exit status: no connection, or the connection was cut


def failure(agent: Agent, args: list[str], code: int, last_line: str) -> tuple[str, str]:
    """What a failed ``fleet-nodectl ARGS`` means, and what to do next: a refusal by the node
    (nothing changed), a cut connection (a restore may have stopped the agent), a node
    without the helper, or anything else the node said."""
    if last_line.startswith(REFUSAL):
        return last_line, (f"The node changed nothing; see `fleet state list {agent.name}`.")
    if code == SSH_FAILED or code < 0:
        cut = f"the SSH connection failed or was cut (exit status {code})"
        if args[:2] == ["state", "restore"]:
            return cut, (f"The agent may have been left stopped: check `fleet status` and run "
                         f"the restore again (`fleet state list {agent.name}`).")
        return cut, "Check that SSH reaches the node (`fleet hosts scan`, `fleet status`)."
    if code == 127:
        return "fleet-nodectl is not on the node", (
            f"Deploy the agent first (`fleet deploy --limit {agent.name}`).")
    return (last_line or f"exit status {code}"), (
        "Check that the agent is deployed with this release (`fleet status`).")


def as_json(agent: Agent, output: bytes) -> Any:
    try:
        return json.loads(output)
    except ValueError:
        raise StateError(f"{agent.name}: fleet-nodectl gave no JSON answer",
                         hint="Redeploy the agent (`fleet deploy --limit NAME`).") from None


def check_snapshot_id(snapshot: str) -> str:
    """``snapshot`` if it is a snapshot id (else :class:`StateError`)."""
    if not SNAPSHOT_ID_RE.fullmatch(snapshot):
        raise StateError(f"{snapshot!r} is not a snapshot id ({SNAPSHOT_ID_FORM})",
                         hint="Pick one from `fleet state list AGENT`.")
    return snapshot


def list_snapshots(agent: Agent, registry: Registry) -> list[SnapshotInfo]:
    """The agent's snapshots on its node, newest first."""
    output = run_nodectl(agent, registry, ["state", "list", "--agent", agent.name])
    return cast(list[SnapshotInfo], as_json(agent, output))


def snapshot(agent: Agent, registry: Registry) -> SnapshotInfo:
    """Snapshot the agent's state now (keeping the registry's ``state.snapshots``)."""
    output = run_nodectl(agent, registry, ["state", "snapshot", "--agent", agent.name,
                                           "--keep", str(agent.state_snapshots)])
    return cast(SnapshotInfo, as_json(agent, output)["snapshot"])


def backup(agent: Agent, registry: Registry, to: Path, snapshot_id: str | None = None) -> Backup:
    """Pull snapshot ``snapshot_id`` (default: a new one, taken now) to ``to/AGENT-ID.tar``
    (0600), then check it: every file of the manifest there, with its sha256, nothing else."""
    ident = check_snapshot_id(snapshot_id) if snapshot_id else snapshot(agent, registry)["id"]
    to.mkdir(parents=True, exist_ok=True)
    path = to / f"{agent.name}-{ident}.tar"
    partial = to / f".{path.name}.partial"
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            run_nodectl(agent, registry, ["state", "export", "--agent", agent.name,
                                          "--snapshot", ident], stdout=out)
        manifest = check_backup(partial)
        replace_atomic(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Backup(path=path, snapshot=ident, manifest=manifest, sha256=file_sha256(path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_backup(path: Path) -> Manifest:
    """The manifest of backup ``path`` once every file it lists is in it with its size and
    sha256 and nothing else is (else :class:`StateError`)."""
    problems: list[str] = []
    found: dict[str, tuple[int, str]] = {}
    manifest: Manifest | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if member.name == "manifest.json" and member.isfile():
                    handle = tar.extractfile(member)
                    manifest = cast(Manifest, json.loads(handle.read())) if handle else None
                elif member.name.startswith("data/") and member.isfile():
                    handle = tar.extractfile(member)
                    data = handle.read() if handle else b""
                    found[member.name[5:]] = (len(data), hashlib.sha256(data).hexdigest())
                elif not (member.isdir() and (member.name == "data"
                                              or member.name.startswith("data/"))):
                    problems.append(f"unexpected member {member.name!r}")
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise StateError(f"{path} is not a readable state backup ({exc})",
                         hint="Take a new one with `fleet state backup AGENT`.") from None
    if manifest is None:
        raise StateError(f"{path} has no manifest.json: it is not a state backup",
                         hint="Take a new one with `fleet state backup AGENT`.")
    wanted = {entry["path"]: (entry["size"], entry["sha256"])
              for entry in manifest.get("files", []) if entry.get("type") == "file"}
    for name in sorted(set(wanted) | set(found)):
        if name not in found:
            problems.append(f"{name} is missing")
        elif name not in wanted:
            problems.append(f"{name} is not in the manifest")
        elif found[name] != wanted[name]:
            problems.append(f"{name} does not match its sha256 in the manifest")
    if problems:
        raise StateError(f"{path} is damaged: {'; '.join(problems[:3])}",
                         hint="Take a new one with `fleet state backup AGENT`.")
    return manifest


def restore(agent: Agent, registry: Registry, snapshot_id: str | None = None,
            from_file: Path | None = None) -> Restored:
    """Restore the agent's state: snapshot ``snapshot_id`` on its node, or the backup
    ``from_file`` (checked here, imported there, then restored). The node stops the agent,
    swaps the state in, starts it and verifies its health; a restore that leaves it unhealthy
    raises :class:`StateError`."""
    if (snapshot_id is None) == (from_file is None):
        raise StateError("name either a snapshot (--snapshot ID) or a backup file (--from "
                         "FILE), not both or neither",
                         hint="See `fleet state list AGENT` for the node's snapshots.")
    if from_file is not None:
        check_backup(from_file)
        with from_file.open("rb") as handle:
            imported = as_json(agent, run_nodectl(
                agent, registry, ["state", "import", "--agent", agent.name], stdin=handle))
        snapshot_id = str(imported["id"])
    assert snapshot_id is not None
    args = ["state", "restore", "--agent", agent.name, "--snapshot",
            check_snapshot_id(snapshot_id), "--unit", f"fleet-agent-{agent.name}.service",
            "--port", str(agent.gateway_port), "--timeout", str(HEALTH_TIMEOUT)]
    if agent.runtime_unit:
        args += ["--runtime-unit", agent.runtime_unit]
    outcome = cast(Restored, as_json(agent, run_nodectl(agent, registry, args)))
    if not outcome.get("healthy"):
        raise StateError(f"{agent.name}: snapshot {snapshot_id} restored, but the agent is "
                         f"not healthy: {'; '.join(outcome.get('problems', [])) or '?'}",
                         hint="Look at `fleet status` and the agent's journal; restore "
                              "another snapshot with `fleet state restore AGENT --snapshot ID`.")
    return outcome
