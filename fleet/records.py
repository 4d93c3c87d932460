"""JSON run records: one file per deploy or rollback run, written on the controller.

``$FLEET_RECORDS_DIR`` (default ``records/`` in the repo) holds ``<run-id>.json``:
``{"run_id", "kind", "started", "finished", "status", "release", "command", "hosts":
{NAME: {...}}, "batches": [...]}``. Several processes of one run (canary, batches) merge
into the same file under a lock. Every string is masked with the secrets before writing.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets as random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleet.masking import Masker

RECORDS_ENV = "FLEET_RECORDS_DIR"
RUN_ID_ENV = "FLEET_RUN_ID"


def records_dir() -> Path:
    """Where run records live: ``$FLEET_RECORDS_DIR`` or ``records/`` in the repo."""
    explicit = os.environ.get(RECORDS_ENV)
    return Path(explicit) if explicit else Path(__file__).resolve().parent.parent / "records"


def now() -> str:
    """UTC timestamp in ISO 8601 with seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_run_id() -> str:
    """A sortable, unique run id like ``20261128T011500Z-3f9a1c``."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{random.token_hex(3)}"


def current_run_id() -> str:
    """This run's id: ``$FLEET_RUN_ID``, else a new one that child processes inherit."""
    run_id = os.environ.get(RUN_ID_ENV)
    if not run_id:
        run_id = os.environ[RUN_ID_ENV] = new_run_id()
    return run_id


def record_path(run_id: str) -> Path:
    """The record file of ``run_id``."""
    return records_dir() / f"{run_id}.json"


@contextmanager
def _locked(run_id: str) -> Iterator[dict[str, Any]]:
    path = record_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "run_id": run_id, "started": now(), "hosts": {}}
        yield record
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        partial.rename(path)


def update_run(run_id: str, masker: Masker | None = None, **fields: Any) -> None:
    """Set top-level fields of the run record."""
    with _locked(run_id) as record:
        record.update(masker.data(fields) if masker else fields)


def update_host(run_id: str, host: str, entry: dict[str, Any],
                masker: Masker | None = None) -> None:
    """Merge ``entry`` into the record of ``host`` in this run."""
    with _locked(run_id) as record:
        record.setdefault("hosts", {}).setdefault(host, {}).update(
            masker.data(entry) if masker else entry)


def load_record(run_id: str) -> dict[str, Any]:
    """The record of ``run_id`` (``FileNotFoundError`` if there is none)."""
    data: dict[str, Any] = json.loads(record_path(run_id).read_text())
    return data


def latest_record() -> dict[str, Any] | None:
    """The newest record in the records dir, or None."""
    paths = sorted(records_dir().glob("*.json"))
    return json.loads(paths[-1].read_text()) if paths else None
