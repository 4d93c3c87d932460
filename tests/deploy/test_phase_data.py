"""Data between the deploy's phases: each phase returns what a later one needs and
``deploy.py`` hands it on; operations get the secrets' masker as an argument (no
process-global cache); whether a host changes at all is decided once, at plan time."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from deploys import audit, services
from deploys.context import AgentContext
from fleet.control.release import Release
from fleet.control.secrets import Secrets
from fleet.core.masking import MASK
from fleet.core.registry import Registry, load_registry

REPO = Path(__file__).resolve().parents[2]
PHASES = sorted((REPO / "deploys").glob("*.py"))
SECRET = "sk-or-test-SECRET-9f8e7d6c"


class Ran:
    """An operation's result as the phases read it (pyinfra's OperationMeta)."""

    def __init__(self, changed: bool, name: str = "") -> None:
        self.name = name
        self.will_change = changed
        self.stdout = ""
        self.changed = changed

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return self.changed


@pytest.fixture
def registry() -> Registry:
    return load_registry(REPO / "registry.yaml")


def context(registry: Registry, name: str = "bezalel") -> AgentContext:
    agent = registry.get(name)
    return AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent),
                        secrets=Secrets(fleet={"OPENROUTER_API_KEY": SECRET}))


def test_no_phase_sets_or_appends_to_the_context() -> None:
    """Outside ``deploys/context.py`` nothing assigns ``ctx.X`` or grows a list on it: the
    context holds inputs and the planned-operations log (``ctx.track``), not hand-offs."""
    found = []
    for path in PHASES:
        if path.name == "context.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "ctx":
                    line = getattr(node, "lineno", 0)
                    found.append(f"{path.name}:{line}: {ast.unparse(target)} =")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("append", "extend", "update", "insert") \
                    and ast.unparse(node.func.value).startswith("ctx."):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    assert found == []


def test_secrets_are_loaded_by_the_context_only_and_every_file_op_gets_diffs() -> None:
    """No module of the deploy but the context reads the secrets file; every file operation
    is handed the masker (``diffs=``) instead of reaching for a global one."""
    loaders, without_diffs, file_ops = [], [], 0
    for path in [*PHASES, REPO / "deploy.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id == "load_secrets" \
                    and path.name != "context.py":
                loaders.append(path.name)
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "ctx.plan" \
                    and ast.unparse(node.args[0]) in ("managed_file", "secret_file"):
                file_ops += 1
                if "diffs" not in {keyword.arg for keyword in node.keywords}:
                    without_diffs.append(f"{path.name}:{node.lineno}")
    assert loaders == [] and without_diffs == []
    assert file_ops >= 10  # baseline, release, soul, keys, services, webhook
    assert not (REPO / "deploys" / "secret_cache.py").exists()


def test_the_context_masks_its_own_secrets(registry: Registry) -> None:
    ctx = context(registry)
    assert ctx.masker(f"key={SECRET}") == f"key={MASK}"
    assert ctx.diffs().masker is ctx.masker
    assert f"OPENROUTER_API_KEY=\"{SECRET}\"" in ctx.env_file()
    other = AgentContext(agent=ctx.agent, registry=registry, soul_source=ctx.soul_source,
                         secrets=Secrets())
    assert other.masker(f"key={SECRET}") == f"key={SECRET}"  # each context its own secrets


def test_will_change_is_decided_once_when_the_plan_is_finished(registry: Registry) -> None:
    converged, changing = context(registry), context(registry, "allegro")
    for ctx in (converged, changing):
        assert ctx.will_change  # undecided: the gate and the lock stay planned
        ctx.track("Agent soul", Ran(False))
    changing.track("Agent config.json", Ran(True))
    converged.finish_plan()
    changing.finish_plan()
    assert (converged.will_change, changing.will_change) == (False, True)
    converged.track("late", Ran(True))
    converged.finish_plan()
    assert converged.will_change is False  # decided once, at plan time


@pytest.mark.parametrize(("changed", "restarted"), [(False, False), (True, True)])
def test_services_restart_on_what_the_earlier_phases_returned(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, changed: bool,
        restarted: bool) -> None:
    """The restart is planned exactly when an operation handed in as ``restart_on`` changes,
    and it is among the service operations the phase returns (the audit's "restarted")."""
    ctx = context(registry)
    ctx.node = {**ctx.node, "unit": {"active": "active", "enabled": "enabled"}}
    planned: list[str] = []

    def operation(**kwargs: Any) -> Ran:
        planned.append(kwargs["name"])
        return Ran(kwargs["name"] == services.RESTART, kwargs["name"])

    for name in ("managed_file", "unit_running"):
        monkeypatch.setattr(services, name, operation)
    monkeypatch.setattr(services.systemd, "service", operation)
    monkeypatch.setattr(services.systemd, "daemon_reload", operation)
    monkeypatch.setattr(services.server, "shell", operation)
    phase = services.run.__wrapped__  # type: ignore[attr-defined]  # without pyinfra's @deploy
    returned = phase(ctx, restart_on=[Ran(False), Ran(changed)])
    assert (services.RESTART in planned) is restarted
    # the state snapshot: planned with the restart only, right before it
    assert planned[-2:] == [services.SNAPSHOT, services.RESTART] if restarted else \
        services.SNAPSHOT not in planned
    runtime = [services.RUNTIME_RUNNING] if ctx.agent.runtime_unit else []
    assert [op.name for op in returned] == [services.RUNNING, *runtime,
                                            *[services.RESTART] * restarted]


def test_the_audit_reads_typed_outcomes_and_facts(registry: Registry) -> None:
    """What fleet-nodectl prints is read as its TypedDicts: a verify's facts come apart from
    the check the record keeps; a rollback's outcome takes a verify's shape; no answer at all
    is a failed check, and the facts of an agent nothing could be read of are complete."""
    import json

    from deploys.audit import check_result, drift
    from deploys.facts import AgentAudit
    from deploys.verify import Check
    from fleet.node.nodectl import AgentFacts, unknown_agent

    ctx = context(registry)
    facts = {**unknown_agent(), "release": "r1", "health_status": 200}
    op = Ran(False)
    op.stdout = json.dumps({"ok": True, "problems": [], "release": "r1", "facts": facts})
    record, printed = check_result(ctx, Check(op=op))
    assert record == {"ok": True, "problems": [], "release": "r1", "unlocked": True}
    assert printed == facts
    rolled = AgentContext(agent=ctx.agent, registry=registry, soul_source=ctx.soul_source,
                          rollback=True, secrets=Secrets())
    op.stdout = json.dumps({"rolled_back": True, "healthy": True, "release": "r0",
                            "from": "r1", "problems": []})
    record, printed = check_result(rolled, Check(op=op))
    assert record["ok"] and record["rollback"]["from"] == "r1" and printed is None
    op.stdout = "not json"
    assert check_result(ctx, Check(op=op)) == (
        {"ok": False, "problems": ["fleet-nodectl did not answer (no JSON output)"]}, None)
    assert set(AgentAudit.default()) == set(AgentFacts.__annotations__)
    found = drift(unknown_agent(), ctx, "r1")
    assert f"{ctx.unit} is None, expected active" in found
    assert f"/var/lib/fleet/{ctx.name} is missing" in found


@pytest.mark.parametrize("changed", [False, True])
def test_the_state_snapshot_runs_on_the_restarts_condition(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, changed: bool) -> None:
    """The snapshot is planned when a restart may come and runs only when the restart does
    (the same ``_if=``), with the release running now and the one the deploy brings; an agent
    whose unit is not running (a first deploy) gets neither."""
    ctx = context(registry)
    ctx.node = {**ctx.node, "current": "0123456789ab",
                "unit": {"active": "active", "enabled": "enabled"}}
    calls: dict[str, dict[str, Any]] = {}

    def operation(**kwargs: Any) -> Ran:
        calls[kwargs["name"]] = kwargs
        return Ran(False, kwargs["name"])

    for name in ("managed_file", "unit_running"):
        monkeypatch.setattr(services, name, operation)
    monkeypatch.setattr(services.systemd, "service", operation)
    monkeypatch.setattr(services.systemd, "daemon_reload", operation)
    monkeypatch.setattr(services.server, "shell", operation)
    release = Release("fedcba987654", Path("release.tar"))
    monkeypatch.setattr(AgentContext, "release", property(lambda self: release))
    phase = services.run.__wrapped__  # type: ignore[attr-defined]
    trigger = Ran(True)
    phase(ctx, restart_on=[trigger])
    snapshot, restart = calls[services.SNAPSHOT], calls[services.RESTART]
    assert snapshot["commands"] == [
        "/opt/fleet/bin/fleet-nodectl state snapshot --agent bezalel --keep 5 --env-before env "
        "--release-before 0123456789ab --release-after fedcba987654"]
    trigger.changed = changed  # what the earlier phase really did, known when it ran
    assert snapshot["_if"]() is restart["_if"]() is changed
    calls.clear()
    env_write = Ran(True)  # the keys phase replaces the environment, keeping the old one
    phase(ctx, restart_on=[env_write], env_write=env_write)
    assert "--env-before env.previous " in calls[services.SNAPSHOT]["commands"][0]
    calls.clear()
    ctx.node = {**ctx.node, "unit": {"active": "inactive"}}
    phase(ctx, restart_on=[Ran(True)])
    assert services.SNAPSHOT not in calls and services.RESTART not in calls


def test_a_rollback_names_where_the_environment_it_restored_came_from() -> None:
    assert audit.rollback_changes({"env_restored": True}) == [
        "Rollback | agent environment restored from env.previous"]
    assert audit.rollback_changes({"env_restored": True, "state_restored": "20261207T0"}) == [
        "Rollback | agent environment restored from snapshot 20261207T0",
        "Rollback | agent state restored from snapshot 20261207T0"]


class AuditedHost:
    """A host as :func:`deploys.audit.audit_node` uses it: its facts, what it logs."""

    name = "bezalel"
    data: dict[str, Any] = {}

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts, self.logged = facts, []

    def get_fact(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.facts

    def log(self, message: str, log_func: Any = None) -> None:
        self.logged.append(message)

    def log_styled(self, message: str, log_func: Any = None, **style: Any) -> None:
        self.logged.append(message)

    def run_shell_command(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("the rollback released the lock itself")


def test_a_refused_rollback_shows_the_nodes_reason_and_fails_no_pyinfra_host(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``fleet rollback --with-state`` with no snapshot for the current release: the node
    changes nothing and says why; the record's reason and the console say the node's reason
    (not "release is X, expected Y", the controller's checkout), and pyinfra is not made to
    fail the host (its "No hosts remaining!" said nothing); the run still fails."""
    import json

    import click

    from deploys.verify import Check
    from fleet.cli.deploy import report
    from fleet.control.records import load_record, update_run
    from fleet.control.rollout import RolloutResult
    from fleet.node.nodectl import unknown_agent

    monkeypatch.setenv("FLEET_RECORDS_DIR", str(tmp_path))
    monkeypatch.setenv("FLEET_RUN_ID", "20261207T000000Z-rollbk")
    monkeypatch.setattr(AgentContext, "release", property(lambda ctx: Release(
        "new-release", tmp_path / "new.tar")))
    why = ("no state snapshot of bezalel was taken before release r1 was deployed (fleet "
           "state list bezalel): nothing rolled back")
    facts = {**unknown_agent(), "release": "r1", "health_status": 200}
    op = Ran(False)
    op.stdout = json.dumps({"rolled_back": False, "reason": why})
    rolled = AgentContext(agent=registry.get("bezalel"), registry=registry,
                          soul_source=registry.soul_path(registry.get("bezalel")),
                          rollback=True, secrets=Secrets())
    host = AuditedHost(facts)
    update_run("20261207T000000Z-rollbk", kind="rollback", status="failed")
    assert audit.audit_node(None, host, rolled, Check(op=op)) is True  # type: ignore[arg-type]
    record = load_record("20261207T000000Z-rollbk")
    entry = record["hosts"]["bezalel"]
    assert (entry["status"], entry["reason"]) == ("failed", why)
    assert entry["verify"]["rollback"]["reason"] == why
    assert not any(line.startswith("release is") for line in entry["drift"])
    assert host.logged[-1] == f"bezalel: not rolled back: {why}"
    with pytest.raises(click.exceptions.Exit):
        report(RolloutResult("20261207T000000Z-rollbk", record))
    line = next(line for line in capsys.readouterr().out.splitlines() if "bezalel" in line)
    assert line.split()[1:3] == ["failed", "r1"] and f"not restarted; {why}" in line
    assert "release is" not in line and "new-release" not in line


@pytest.mark.parametrize("converged", [True, False])
def test_a_converged_host_is_only_checked_and_never_rolled_back(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, converged: bool) -> None:
    """Verify rolls back only what this deploy changed: a host preflight found converged gets
    ``fleet-nodectl verify`` without ``--rollback`` (an agent failing on its own is reported,
    not switched to an older release nobody asked for)."""
    from deploys import verify
    from deploys.preflight import Preflight

    ctx = context(registry)
    monkeypatch.setattr(AgentContext, "release", property(
        lambda self: Release("444a224b3f00", REPO / "release.tar.gz")))
    checked: list[dict[str, Any]] = []
    monkeypatch.setattr(ctx, "check", lambda operation, name, **arguments: (
        checked.append(arguments) or Ran(False, name)))
    phase = verify.run.__wrapped__  # type: ignore[attr-defined]  # without pyinfra's @deploy
    phase(ctx, Preflight(ok=True, converged=converged), Ran(False), [])
    (arguments,) = checked
    assert arguments["args"][0] == "verify"
    assert ("--rollback" in arguments["args"]) is not converged


def test_the_helpers_code_cache_is_a_folder_baseline_makes_root_only_writable(
        registry: Registry) -> None:
    """``/opt/fleet/lib/__pycache__`` is made by baseline (before the release phase first runs
    the helper) and checked on every deploy: Python would make it with the umask of the
    helper's first run, and code in it runs as root."""
    from deploys import baseline
    from deploys.context import NODECTL_CACHE, NODECTL_DIR

    ctx = context(registry)
    folders = baseline.folders(ctx)
    assert (NODECTL_DIR, "root", "root", "755") in folders
    assert folders.index((NODECTL_CACHE, "root", "root", "755")) > folders.index(
        (NODECTL_DIR, "root", "root", "755"))
    assert {NODECTL_DIR, NODECTL_CACHE} <= set(ctx.managed_paths())
