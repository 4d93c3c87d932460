"""``fleet test``: the live testinfra suite (``tests/live``) against every agent, in parallel.

One pytest process per agent (``FLEET_LIVE_REGISTRY`` and ``FLEET_LIVE_AGENT`` tell the suite
which node to check), reaching it over ``ssh://`` with the deploy's SSH settings (user, port,
key, pinned host keys: :func:`fleet.control.hosts.ssh_settings`). Without pytest-testinfra it says
so once, with how to install it. Each process writes a JUnit XML report; the per-host summary is
read from it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.control.hosts import ssh_settings
from fleet.core.errors import FleetError
from fleet.core.registry import REGISTRY_ENV, Agent, Registry

LIVE_REGISTRY_ENV = "FLEET_LIVE_REGISTRY"
LIVE_AGENT_ENV = "FLEET_LIVE_AGENT"
SUITE = Path("tests") / "live"
HOST_TIMEOUT_S = 600


class LiveTestError(FleetError):
    """The live suite cannot be run (no suite in this folder, pytest missing, ...)."""


@dataclass
class HostResult:
    """One agent's outcome: checks passed, and each failed check with its message."""

    agent: str
    passed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and self.passed > 0


def testinfra_target(agent: Agent, registry: Registry) -> tuple[str, dict[str, Any]]:
    """The ``testinfra.get_host`` spec and keyword arguments reaching ``agent`` with the
    deploy's SSH settings (:func:`fleet.control.hosts.ssh_settings`: key, host keys pinned to the
    registry's known_hosts only and checked strictly; through sudo when the registry's
    ``fleet.become`` says so)."""
    settings = ssh_settings(agent, registry)
    extra = [*settings.ssh_args(), "-o", "LogLevel=ERROR"]
    kwargs: dict[str, Any] = {"ssh_extra_args": shlex.join(extra)}
    if registry.become == "sudo":
        kwargs["sudo"] = True  # checks read root-only files (env, sshd -T)
    return f"ssh://{settings.destination}:{settings.port}", kwargs


def require_testinfra() -> None:
    """Refuse (:class:`LiveTestError`) when pytest or pytest-testinfra is missing from this
    Python, once, before any host is tried."""
    missing = [package for package, module in (("pytest", "pytest"),
                                               ("pytest-testinfra", "testinfra"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise LiveTestError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed in "
            f"{sys.executable}: fleet test runs the live checks with them",
            hint=f"Install {'them' if len(missing) > 1 else 'it'}: {sys.executable} -m pip "
                 f"install {' '.join(missing)} (or: pip install -e '.[test]' in the fleet "
                 "repository)")


def read_junit(agent: str, path: Path) -> HostResult:
    """A host's result from its JUnit XML report."""
    result = HostResult(agent=agent)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        result.failed.append(("the live suite", f"no report: {exc}"))
        return result
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or problem.text or "failed").strip()
            result.failed.append((name, message.splitlines()[0][:300]))
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    return result


def run_host(agent: str, registry: Registry, suite: Path, reports: Path) -> HostResult:
    """Run the suite against one agent; its result."""
    report = reports / f"{agent}.xml"
    env = {**os.environ, LIVE_REGISTRY_ENV: str(registry.path.resolve()), LIVE_AGENT_ENV: agent,
           REGISTRY_ENV: str(registry.path.resolve())}
    # The project's own pytest options (a default marker filter, -n) are not the live suite's.
    command = [sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", f"--junitxml={report}", "-o", "junit_family=xunit1"]
    try:
        subprocess.run(command, cwd=suite.parent.parent, env=env, capture_output=True,
                       timeout=HOST_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return HostResult(agent=agent, failed=[("the live suite",
                                                f"timed out after {HOST_TIMEOUT_S}s")])
    return read_junit(agent, report)


def live_test(registry: Registry, names: list[str], project: Path,
              echo: Callable[[str], None] = lambda _: None) -> list[HostResult]:
    """Run ``tests/live`` of ``project`` against ``names`` in parallel; results in order."""
    suite = project / SUITE
    if not suite.is_dir():
        raise LiveTestError(f"{suite} is missing: no live suite to run",
                            hint="Run fleet test from the fleet repository's top folder.")
    require_testinfra()
    with tempfile.TemporaryDirectory(prefix="fleet-test-") as scratch, \
            ThreadPoolExecutor(max_workers=max(1, min(len(names), 16))) as pool:
        echo(f"==> live checks of {', '.join(names)} (tests/live, in parallel)")
        return list(pool.map(lambda name: run_host(name, registry, suite, Path(scratch)),
                             names))
