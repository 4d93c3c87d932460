"""JSON run records: one file per deploy or rollback run, written on the controller.

``$FLEET_RECORDS_DIR`` (default ``./records`` in the working directory) holds
``<run-id>.json`` (mode 0600), a :class:`RunRecord`. The rollout's controller writes the run's
fields, stages and verdicts; each stage's pyinfra process writes its hosts' entries
(:class:`HostRecord`) from the audit phase. Writers merge into the file under an ``flock``;
every string is masked with the secrets before writing. The record is the run's outcome:
``fleet deploy``, ``fleet rollback`` and the webhook read it, never console output.
"""

from __future__ import annotations

import json
import os
import re
import secrets as random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

from bus.locks import FileLock
from bus.timestamps import id_stamp, utc_timestamp
from fleet.core.atomic import write_atomic
from fleet.core.errors import FleetError
from fleet.core.masking import Masker

if TYPE_CHECKING:  # types only: the node's command line stays unloaded on the controller
    from fleet.node.nodectl import AgentFacts, RollbackOutcome

RECORDS_ENV = "FLEET_RECORDS_DIR"
RUN_ID_ENV = "FLEET_RUN_ID"
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

HostStatus = Literal["ok", "failed", "rolled_back", "skipped", "planned"]
RunStatus = Literal["running", "ok", "degraded", "partial", "failed"]


class CheckRecord(TypedDict, total=False):
    """A host's verify (or ``fleet rollback``) outcome as the record keeps it: what
    ``fleet-nodectl`` printed (:class:`fleet.node.nodectl.VerifyOutcome`), a rollback's in the
    same shape."""

    ok: bool
    problems: list[str]
    health: Any  # the gateway's last /health body
    release: str
    rollback: RollbackOutcome  # verify's automatic rollback, or ``fleet rollback``'s
    unlocked: bool  # the same command released the node's deploy lock


class HostRecord(TypedDict, total=False):
    """One host's part of a run: its outcome, what changed, and what the node runs now."""

    status: HostStatus
    phase: str  # where a host failed early (``preflight``)
    reached: bool  # the deploy connected and read the node's snapshot
    unreachable: bool  # skipped: its region was unreachable
    reason: str  # one line: why the host is not ``ok``
    problems: list[str]
    expected_release: str
    release: str | None
    soul_sha256: str | None
    config_hash: str | None
    changed: list[str]  # names of this host's operations that changed something, in order
    planned: list[str]  # dry run: names of this host's operations that would change
    diffs: dict[str, list[str]]  # dry run with --diff: unified diff lines per file, masked
    restarted: bool
    verify: CheckRecord
    facts: AgentFacts
    drift: list[str]
    operations: int  # operations pyinfra planned for the host (a converged one: its checks)
    finished: str


class StageRecord(TypedDict, total=False):
    """One rollout stage: its hosts, their outcomes, and the verdict on going on."""

    stage: str  # ``canary`` or ``workers``
    region: str | None  # the region of a region wave
    hosts: list[str]
    outcome: dict[str, str]
    exit_code: int | None
    started: str
    finished: str


class Verdict(TypedDict):
    """The controller's decision after a stage: may the next stage go on."""

    go: bool
    failures: int
    allowed: int
    reason: NotRequired[str]  # why not, when no failure count says it


class MoveStep(TypedDict, total=False):
    """One step of ``fleet move``: what was done, whether it worked, when, and a detail."""

    step: str
    ok: bool
    at: str
    detail: str


# ``fleet move``: the agent, its old and new host ("from": a keyword, hence this form), whether
# its old state is purged, the registry edit as a diff, and the steps so far.
MoveRecord = TypedDict("MoveRecord", {"agent": str, "from": str, "to": str, "purge": bool,
                                      "diff": str, "steps": list[MoveStep]})


class RunRecord(TypedDict, total=False):
    """A whole deploy, rollback or move run (a move's deploys have records of their own)."""

    run_id: str
    kind: Literal["deploy", "rollback", "move"]
    dry: bool
    status: RunStatus
    started: str
    finished: str
    release: str
    registry: str
    limit: list[str]
    batch: int | None
    max_failures: int
    to: str | None
    stages: list[StageRecord]
    verdicts: dict[str, Verdict]
    skipped: list[str]
    regions: list[str]  # the regions of the run, in rollout order
    unreachable_regions: list[str]  # regions skipped as unreachable (the run is ``partial``)
    hosts: dict[str, HostRecord]
    move: MoveRecord  # kind move
    snapshot: str  # kind move: the final snapshot carried


class RecordError(FleetError):
    """A run record is missing or unreadable, or a run id is malformed."""

    hint = "List the runs under $FLEET_RECORDS_DIR (default ./records)."


def records_dir() -> Path:
    """Where run records live: ``$FLEET_RECORDS_DIR``, else ``records/`` in the working dir."""
    explicit = os.environ.get(RECORDS_ENV)
    return Path(explicit) if explicit else Path.cwd() / "records"


def new_run_id() -> str:
    """A sortable, unique run id like ``20261128T011500Z-3f9a1c``."""
    return f"{id_stamp()}-{random.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    """``run_id`` when it is a safe file name (letters, digits, ``.``, ``_``, ``-``)."""
    if not RUN_ID_RE.fullmatch(run_id):
        raise RecordError(f"run id {run_id!r} is not valid: use 1-128 letters, digits, '.', "
                          "'_' or '-', starting with a letter or digit")
    return run_id


def current_run_id() -> str:
    """This run's id: ``$FLEET_RUN_ID``, else a new one that child processes inherit."""
    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id:
        run_id = os.environ[RUN_ID_ENV] = new_run_id()
    return check_run_id(run_id)


def record_path(run_id: str) -> Path:
    """The record file of ``run_id``."""
    return records_dir() / f"{check_run_id(run_id)}.json"


@contextmanager
def _locked(run_id: str) -> Iterator[dict[str, Any]]:
    """The record of ``run_id`` to change in place, written back atomically (0600), as one
    line of JSON: every host's outcome rewrites the whole record, so at 50 hosts an indented
    dump (Python's own encoder; only an unindented one is C) cost more than the rest of the
    host's planning (``jq . RUN.json`` shows it indented)."""
    path = record_path(run_id)
    with FileLock(path.with_suffix(".lock")):
        record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "run_id": run_id, "started": utc_timestamp(), "hosts": {}}
        yield record
        write_atomic(path, json.dumps(record, sort_keys=True) + "\n", mode=0o600)


def update_run(run_id: str, masker: Masker | None = None, **fields: Any) -> None:
    """Set top-level fields of the run record."""
    with _locked(run_id) as record:
        record.update(masker.data(fields) if masker else fields)


def update_host(run_id: str, host: str, entry: HostRecord | dict[str, Any],
                masker: Masker | None = None) -> None:
    """Merge ``entry`` into the record of ``host`` in this run."""
    with _locked(run_id) as record:
        record.setdefault("hosts", {}).setdefault(host, {}).update(
            masker.data(dict(entry)) if masker else entry)


def add_diff(run_id: str, host: str, path: str, lines: list[str]) -> None:
    """Keep the planned diff of ``path`` on ``host`` (a dry run with ``--diff``): ``lines``
    masked already (:class:`deploys.ops.DiffReport` masks them as it logs them)."""
    with _locked(run_id) as record:
        entry = record.setdefault("hosts", {}).setdefault(host, {})
        entry.setdefault("diffs", {})[path] = lines


def set_verdict(run_id: str, stage: int, verdict: Verdict) -> None:
    """Record the controller's verdict after ``stage`` (the next stage's gate reads it)."""
    with _locked(run_id) as record:
        record.setdefault("verdicts", {})[str(stage)] = verdict


def load_record(run_id: str) -> RunRecord:
    """The record of ``run_id`` (``FileNotFoundError`` if there is none)."""
    return cast(RunRecord, json.loads(record_path(run_id).read_text()))


class RecordWatch:
    """One run's record, polled: read again only when its file was replaced since the last
    read (every write renames a new file in), so polling it often costs a ``stat``."""

    def __init__(self, run_id: str) -> None:
        self.path = record_path(run_id)
        self._seen: tuple[int, int, int] | None = None
        self._record: RunRecord = {}
        self._checked = -1.0

    def read(self, max_age: float = 0.0) -> RunRecord:
        """The record as it is now (empty while there is none or it cannot be read); as it
        was at the last look when that was less than ``max_age`` seconds ago."""
        if time.monotonic() - self._checked < max_age:
            return self._record
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            try:
                self._record = cast(RunRecord, json.loads(self.path.read_text()))
            except (FileNotFoundError, ValueError):
                return self._record
            self._seen = seen
        return self._record


def host_reason(entry: HostRecord) -> str:
    """Why a host is not ``ok``, in one line: its reason, else its problems (its verify's),
    else its drift; '' when the entry says nothing."""
    problems = entry.get("problems") or entry.get("verify", {}).get("problems") or []
    return (entry.get("reason") or "; ".join(map(str, problems))
            or "; ".join(map(str, entry.get("drift") or [])))


def went_through(record: RunRecord) -> bool:
    """A deploy that changed the fleet: not a dry run, ``ok``, ``degraded`` or ``partial``,
    with a release."""
    return (record.get("kind") == "deploy" and not record.get("dry")
            and record.get("status") in ("ok", "degraded", "partial")
            and bool(record.get("release")))


def latest_deploy(directory: Path | None = None) -> RunRecord | None:
    """The newest deploy that went through (:func:`went_through`) in ``directory`` (default:
    the records dir), or None."""
    for path in sorted((directory or records_dir()).glob("*.json"), reverse=True):
        try:
            record = cast(RunRecord, json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
        if went_through(record):
            return record
    return None
