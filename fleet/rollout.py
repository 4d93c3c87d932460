"""``fleet deploy``: the canary first, then the workers (all at once or in batches).

A thin loop over the pyinfra CLI (``python -m pyinfra -y inventory.py deploy.py --limit ...``);
each stage's outcome per host is read from the run record the audit phase writes. The rollout
stops when more hosts failed than ``max_failures``. Output is streamed with secrets masked.
The next stage's process is started early and held at a gate (``deploys/gate.py``) until the
runner records its verdict on the current stage.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.errors import DeployError
from fleet.inventory import inventory_groups
from fleet.masking import Masker
from fleet.records import RUN_ID_ENV, load_record, new_run_id, now, update_host, update_run
from fleet.registry import Registry
from fleet.release import build_release, release_env, repo_root
from fleet.secrets import load_secrets

Echo = Callable[[str], None]
TICK_S = 0.05
FINAL_STATUSES = ("ok", "rolled_back", "failed")


@dataclass(frozen=True)
class RolloutOptions:
    """What ``fleet deploy`` was asked to do."""

    dry: bool = False
    diff: bool = False
    limit: tuple[str, ...] = ()
    batch: int | None = None
    max_failures: int = 0


@dataclass
class RolloutResult:
    """The outcome of a rollout: per-host entries of the run record, and the stages run."""

    run_id: str
    status: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def select(registry: Registry, limit: Sequence[str]) -> list[str]:
    """Agent names matched by ``limit`` (agent or group names), in registry order."""
    if not limit:
        return list(registry.agents)
    groups = inventory_groups(registry)
    chosen: set[str] = set()
    for name in limit:
        if name in registry.agents:
            chosen.add(name)
        elif name in groups:
            chosen.update(entry[0] for entry in groups[name])
        else:
            known = ", ".join([*registry.agents, *groups])
            raise DeployError(f"--limit {name!r} matches no agent or group (known: {known})",
                              hint="Use an agent name, a role or a capability.")
    return [name for name in registry.agents if name in chosen]


def plan_stages(registry: Registry, names: Sequence[str], batch: int | None) -> list[list[str]]:
    """Canary stage (the orchestrators) then the workers, in batches of ``batch`` if given."""
    canary = [name for name in names if registry.agents[name].role == "orchestrator"]
    workers = [name for name in names if name not in canary]
    size = batch or len(workers) or 1
    stages = [canary] if canary else []
    stages += [workers[index:index + size] for index in range(0, len(workers), size)]
    return stages


def pyinfra_command(hosts: Sequence[str], options: RolloutOptions,
                    data: Sequence[str] = ()) -> list[str]:
    """The pyinfra CLI call for one stage (``-y`` unless dry: a dry run shows the changes),
    started through :mod:`fleet.pyinfra_launcher` (pyinfra's CLI, quicker to start)."""
    command = [sys.executable, "-m", "fleet.pyinfra_launcher", *([] if options.dry else ["-y"]),
               "inventory.py", "deploy.py"]
    for name in hosts:
        command += ["--limit", name]
    for item in data:
        command += ["--data", item]
    if options.dry:
        command.append("--dry")
    if options.diff:
        command.append("--diff")
    return command


class StageProcess:
    """One pyinfra process run from the repo root; a reader thread buffers its masked output
    so that a stage started early stays quiet until it is its turn to print."""

    def __init__(self, command: list[str], env: dict[str, str], masker: Masker) -> None:
        self.process = subprocess.Popen(command, cwd=repo_root(), env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.masker = masker
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(self.masker(line.rstrip("\n")))
        self.lines.put(None)

    def stream(self, echo: Echo, tick: Callable[[], None] | None = None) -> int:
        """Echo the output (buffered so far, then live) until the process ends; its exit code.
        ``tick`` is called about every ``TICK_S`` meanwhile."""
        while True:
            try:
                line = self.lines.get(timeout=TICK_S if tick else None)
            except queue.Empty:
                line = ""  # nothing new (not an empty line of output)
            else:
                if line is None:
                    return self.process.wait()
                echo(line)
            if tick is not None:
                tick()


def run_stage(command: list[str], env: dict[str, str], masker: Masker, echo: Echo) -> int:
    """Run one pyinfra call from the repo root, streaming its output through the masker."""
    return StageProcess(command, env, masker).stream(echo)


def stage_env(registry: Registry, run_id: str, extra: dict[str, str]) -> dict[str, str]:
    """Environment of the pyinfra child: this registry, run id, prebuilt release."""
    env = dict(os.environ)
    env.update({"FLEET_REGISTRY": str(registry.path.resolve()), RUN_ID_ENV: run_id,
                "PYINFRA_PROGRESS": "off", **extra})
    return env


def finished_hosts(run_id: str, hosts: Sequence[str]) -> dict[str, str] | None:
    """Status per host once every host of a stage has its final entry in the run record
    (written by its audit, or by a failed preflight); None while any is still running."""
    try:
        entries = load_record(run_id).get("hosts", {})
    except (FileNotFoundError, ValueError):
        return None
    statuses = {name: entries.get(name, {}).get("status") for name in hosts}
    if all(status in FINAL_STATUSES for status in statuses.values()):
        return {name: str(status) for name, status in statuses.items()}
    return None


def stage_outcome(run_id: str, hosts: Sequence[str], code: int, dry: bool) -> dict[str, str]:
    """Status per host of one stage, from the run record (hosts without an entry failed)."""
    if dry:
        return {name: "planned" if code == 0 else "failed" for name in hosts}
    try:
        entries = load_record(run_id).get("hosts", {})
    except FileNotFoundError:
        entries = {}
    outcome = {}
    for name in hosts:
        status = entries.get(name, {}).get("status")
        if status is None:
            status = "failed"
            update_host(run_id, name, {"status": status, "reason": (
                "no audit record: unreachable over SSH or an operation failed before verify; "
                "see the pyinfra output above")})
        outcome[name] = status
    return outcome


def deploy_fleet(registry: Registry, options: RolloutOptions, echo: Echo) -> RolloutResult:
    """Deploy the selected agents: canary first, then workers; stop past ``max_failures``.

    Each next stage's pyinfra process starts while the current stage runs (start-up and
    read-only planning overlap) and waits at its rollout gate for this stage's verdict, given
    as soon as every host of the stage has its audit record."""
    masker = Masker(load_secrets().values())
    names = select(registry, options.limit)
    run_id = new_run_id()
    release = build_release()
    env = stage_env(registry, run_id, release_env(release))
    update_run(run_id, kind="deploy", release=release.id, registry=str(registry.path),
               dry=options.dry, limit=list(options.limit), batch=options.batch)
    result = RolloutResult(run_id=run_id, status="ok")
    stages = plan_stages(registry, names, options.batch)
    verdicts: dict[str, bool] = {}

    def launch(index: int) -> StageProcess:
        gate = [] if index == 0 or options.dry else [f"after_stage={index - 1}",
                                                     f"runner_pid={os.getpid()}"]
        return StageProcess(pyinfra_command(stages[index], options, gate), env, masker)

    failures = 0
    current = launch(0) if stages else None
    for index, hosts in enumerate(stages):
        assert current is not None
        pipelined = index + 1 < len(stages) and not options.dry
        upcoming = launch(index + 1) if pipelined else None
        label = "canary" if index == 0 and registry.agents[hosts[0]].role == "orchestrator" \
            else "workers"
        echo(f"==> {label}: {', '.join(hosts)} (release {release.id}, run {run_id})")

        def early_verdict(index: int = index, hosts: list[str] = hosts,
                          before: int = failures) -> None:
            """Give the verdict as soon as every host of the stage is audited, so the next
            stage need not wait for this process's summary and disconnects."""
            if str(index) not in verdicts and (done := finished_hosts(run_id, hosts)):
                failed = sum(status != "ok" for status in done.values())
                verdicts[str(index)] = before + failed <= options.max_failures
                update_run(run_id, verdicts=verdicts)

        code = current.stream(echo, early_verdict if pipelined else None)
        outcome = stage_outcome(run_id, hosts, code, options.dry)
        result.stages.append({"stage": label, "hosts": hosts, "exit_code": code,
                              "outcome": outcome})
        failures += sum(status not in ("ok", "planned") for status in outcome.values())
        verdicts[str(index)] = failures <= options.max_failures
        update_run(run_id, verdicts=verdicts)
        if not verdicts[str(index)]:
            result.status = "failed"
            skipped = [name for stage in stages[index + 1:] for name in stage]
            if skipped:
                echo(f"==> stopping: {failures} host(s) failed (allowed: "
                     f"{options.max_failures}); not deployed: {', '.join(skipped)}")
                update_run(run_id, skipped=skipped)
            if upcoming is not None:
                upcoming.stream(lambda line: None)  # its gate refuses at once
            break
        current = upcoming or (launch(index + 1) if index + 1 < len(stages) else None)
    if failures and result.status == "ok":
        result.status = "degraded"
    update_run(run_id, stages=result.stages, status=result.status, finished=now())
    if not options.dry:
        result.hosts = load_record(run_id).get("hosts", {})
    return result
