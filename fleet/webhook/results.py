"""Per-host results of a deploy, read from what ``pyinfra -y --json`` printed.

pyinfra 3.10 prints one JSON line on stdout at the end of a run::

    {"plan": [...], "results": {"operations": [{"name": ..., "success": [hosts changed],
     "no_change": [hosts], "error": [hosts]}, ...], "totals": {...}, "failed_hosts": [...]}}

When every host fails, pyinfra stops with "No hosts remaining" and prints no JSON; then the
``[host] Error`` lines of the log are all there is to go on.
"""

from __future__ import annotations

import json
import re
from typing import Any

HOST_ERROR_RE = re.compile(r"^\s*\[(?P<host>[^\]\s]+)\] (?:Error|Unexpected error)", re.M)


def find_pyinfra_json(log: str) -> dict[str, Any] | None:
    """The last line of ``log`` that is pyinfra's ``--json`` result document."""
    for line in reversed(log.splitlines()):
        if not line.startswith('{"plan"'):
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "results" in document:
            return document
    return None


def host_results(log: str) -> dict[str, dict[str, Any]]:
    """``{host: {"status", "changed", "unchanged", "failed", "changes", "errors"}}``."""
    document = find_pyinfra_json(log)
    if document is None or not isinstance(document.get("results"), dict):
        return {host: _entry(status="error", errors=["see log"])
                for host in dict.fromkeys(HOST_ERROR_RE.findall(log))}
    results = document["results"]
    hosts: dict[str, dict[str, Any]] = {}
    for operation in results.get("operations", []):
        name = str(operation.get("name", "?"))
        for key, counter, names in (("success", "changed", "changes"),
                                    ("no_change", "unchanged", None),
                                    ("error", "failed", "errors")):
            for host in operation.get(key, []):
                entry = hosts.setdefault(host, _entry())
                entry[counter] += 1
                if names:
                    entry[names].append(name)
    for host in results.get("failed_hosts", []):
        hosts.setdefault(host, _entry())["status"] = "error"
    for entry in hosts.values():
        if entry["failed"]:
            entry["status"] = "error"
    return hosts


def _entry(status: str = "ok", errors: list[str] | None = None) -> dict[str, Any]:
    """A host's empty result record."""
    return {"status": status, "changed": 0, "unchanged": 0, "failed": len(errors or []),
            "changes": [], "errors": list(errors or [])}
