"""Release pre-staging (``fleet.prestage``, ``fleet deploy --prestage``): a later rollout
stage's hosts get the release uploaded and unpacked before their rollout gate, nothing else.

The plan tests run ``deploy.py`` itself at plan time for one host (its snapshot handed in)
and order the operations it plans as pyinfra does, by the line numbers of their call stacks
from the deploy file on (:func:`stack_order`)."""

from __future__ import annotations

import inspect
import json
import runpy
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyinfra
import pytest
from click.testing import CliRunner
from pyinfra.api import Config, FileUploadCommand
from pyinfra.context import ctx_host, ctx_state

from deploys import baseline, context, gate, lock, ops
from deploys.context import OPT, RELEASES, AgentContext
from deploys.facts import NodeSnapshot, empty_snapshot
from deploys.ops import UPLOAD_DIR
from fleet.cli import main
from fleet.control import records, rollout
from fleet.control.release import Release
from fleet.control.secrets import Secrets
from fleet.core.registry import load_registry
from tests.deploy.fake_stage import script_rollout
from tests.deploy.test_converged import FakeHost, write_fleet

REPO = Path(__file__).resolve().parents[2]
DEPLOY = str(REPO / "deploy.py")
RELEASE = "fedcba987654"
BASICS = {"os": "debian", "os_like": "", "systemd": True, "python": (3, 11, 2),
          "free_mb": 5000, "skew_s": 0.0, "lock": ""}
LOCK = "Preflight | Take the node's deploy lock"
GATE = "Rollout | Rollout: earlier stages passed"
STAGED = ["Pre-stage | Release folders (owners and modes as baseline sets them)",
          "Pre-stage | Release unpacked"]


class Planned:
    """An operation as the phases read it at plan time: it would change the node."""

    will_change = True
    stdout = ""

    def is_complete(self) -> bool:
        return False

    def did_change(self) -> bool:
        return False


def stack_order() -> list[int]:
    """pyinfra's order of an operation called now: the line numbers of the call stack from the
    deploy file on, pyinfra's own frames left out (pyinfra.api.util's
    ``get_operation_order_from_stack``; operations run sorted by these lists)."""
    frames = list(reversed(inspect.stack(context=0)))
    start = next(index for index, frame in enumerate(frames) if frame.filename == DEPLOY)
    own = str(Path(pyinfra.__file__).parent)
    return [frame.lineno for frame in frames[start:] if not frame.filename.startswith(own)]


@dataclass
class Recorder(AgentContext):
    """The deploy's context, recording each operation the phases plan (checks included) with
    pyinfra's order for it instead of planning it."""

    order: list[tuple[list[int], str, dict[str, Any]]] = field(default_factory=list)

    def _record(self, name: str, arguments: dict[str, Any]) -> Planned:
        where = stack_order()
        self.order.append((where, f"{self.phase_name} | {name}", arguments))
        return Planned()

    def plan(self, operation: Callable[..., Any], name: str, **arguments: Any) -> Any:
        if self.probing:
            return super().plan(operation, name, **arguments)
        return self.track(name, self._record(name, arguments))

    def check(self, operation: Callable[..., Any], name: str, **arguments: Any) -> Any:
        return self._record(name, arguments)

    def ordered(self) -> list[str]:
        """The operation names in the order pyinfra runs them."""
        return [name for _, name, _ in sorted(self.order, key=lambda item: item[0])]


STATE = SimpleNamespace(config=Config(), is_executing=False, check_for_changes=False,
                        add_callback_handler=lambda handler: None)


class Data(SimpleNamespace):
    """pyinfra's host data: attributes, and ``get``."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class NodeHost(FakeHost):
    """A host whose one fact is the node snapshot it was given."""

    def __init__(self, node: NodeSnapshot, **data: Any) -> None:
        super().__init__()
        self.data = Data(**data)
        self.snapshot = node

    def get_fact(self, fact: Any, **kwargs: Any) -> NodeSnapshot:
        return self.snapshot

    def log_styled(self, message: str, **kwargs: Any) -> None:
        self.noops.append(message)


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registry (an orchestrator and two workers) and a run record under ``tmp_path``."""
    registry = write_fleet(tmp_path)
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path / "records"))
    monkeypatch.setenv(records.RUN_ID_ENV, "r1")
    built = Release(RELEASE, tmp_path / "release.tar.gz")
    monkeypatch.setattr(AgentContext, "release", property(lambda self: built))
    monkeypatch.setattr(context, "AgentContext", Recorder)
    monkeypatch.setattr(context, "_contexts", {})
    monkeypatch.setattr(context, "controller_secrets", lambda path: Secrets())
    return registry


def cold() -> NodeSnapshot:
    node = empty_snapshot()
    node["basics"] = dict(BASICS)  # type: ignore[typeddict-unknown-key]
    return node


def plan(registry: Path, name: str, node: NodeSnapshot, **data: Any) -> Recorder:
    """Run ``deploy.py`` at plan time for agent ``name`` on a node with snapshot ``node``."""
    host = NodeHost(node, agent_name=name, registry_path=str(registry),
                    soul_path=str(registry.parent / "souls" / f"{name}.md"), **data)
    with ctx_state.use(STATE), ctx_host.use(host):
        runpy.run_path(DEPLOY, run_name="deploy")
    ctx = context.context_of(name)
    assert isinstance(ctx, Recorder)
    return ctx


def test_a_later_stage_unpacks_the_release_before_its_gate_and_switches_after(
        fleet: Path) -> None:
    ctx = plan(fleet, "plain", cold(), rollout_stage=1, prestage=True)
    names = ctx.ordered()
    assert names[:5] == [LOCK, *STAGED, GATE, "Baseline | Agent user and group (system, no "
                                                    "login shell)"]
    assert "Release | Release unpacked" not in names  # once, before the gate
    gate_at = names.index(GATE)
    after = names[gate_at + 1:]
    assert "Release | Current release switched" in after
    assert all(name.startswith(("Preflight", "Pre-stage")) for name in names[:gate_at])
    staged = {name: arguments for _, name, arguments in ctx.order}
    assert staged[STAGED[1]]["release_id"] == RELEASE
    assert staged[STAGED[1]]["releases_dir"] == RELEASES
    # a cold node: the folders the upload needs, as baseline makes them (no agent-owned one)
    assert staged[STAGED[0]]["specs"] == [(OPT, "root", "root", "755"),
                                          (RELEASES, "root", "root", "755")]
    assert set(staged[STAGED[0]]["specs"]) <= set(staged["Baseline | Fleet directories "
                                                          "(owners and modes)"]["specs"])
    assert staged[LOCK]["_if"]() is True  # the host changes: the lock is taken, before them


@pytest.mark.parametrize("data", [
    {"rollout_stage": 1},  # the setting off
    {"rollout_stage": 1, "prestage": False},
    {"prestage": True},  # the canary (stage 0)
    {"rollout_stage": 0, "prestage": True},
    {"rollout_stage": 1, "prestage": True, "action": "rollback"},
], ids=["off", "off-explicitly", "canary", "canary-stage-0", "rollback"])
def test_no_prestage_without_the_setting_in_the_canary_or_a_rollback(
        fleet: Path, data: dict[str, Any]) -> None:
    ctx = plan(fleet, "boss" if "rollout_stage" not in data else "plain", cold(), **data)
    names = ctx.ordered()
    assert not [name for name in names if name.startswith("Pre-stage")]
    if data.get("action") != "rollback":
        assert names.index("Release | Release unpacked") > names.index(LOCK)
        if data.get("rollout_stage"):
            assert names.index("Release | Release unpacked") > names.index(GATE)


def test_a_node_failing_preflight_gets_no_upload(fleet: Path) -> None:
    node = cold()
    node["basics"]["python"] = (3, 9, 2)  # type: ignore[typeddict-item]
    ctx = plan(fleet, "plain", node, rollout_stage=1, prestage=True)
    names = ctx.ordered()
    assert names[0] == "Preflight | Preflight failed (the reason is in the host's lines above)"
    assert not [name for name in names if "Release" in name]


@pytest.mark.parametrize("where", ["releases", "current"])
def test_a_node_with_the_release_prestages_nothing(fleet: Path, where: str) -> None:
    node = cold()
    if where == "releases":
        node["releases"] = [RELEASE]
    else:
        node["current"] = RELEASE
    ctx = plan(fleet, "plain", node, rollout_stage=1, prestage=True)
    assert not [name for name in ctx.ordered() if name.startswith("Pre-stage")]


def test_with_sudo_the_upload_folder_is_made_first(fleet: Path) -> None:
    text = fleet.read_text().replace("fleet: {name: t}", "fleet: {name: t, become: sudo}")
    fleet.write_text(text.replace("runtime: none,", "runtime: none, ssh_user: deploy,"))
    ctx = plan(fleet, "plain", cold(), rollout_stage=2, prestage=True)
    specs = next(arguments["specs"] for _, name, arguments in ctx.order if name == STAGED[0])
    assert specs == [(OPT, "root", "root", "755"), (RELEASES, "root", "root", "755"),
                     ("/var/lib/fleet", "root", "root", "755"),
                     (UPLOAD_DIR, "deploy", "root", "700")]
    assert baseline.release_folders(ctx) == specs


class LockHost:
    """A host the gate runs on: the shell commands it was sent."""

    name = "plain"

    def __init__(self) -> None:
        self.data = Data()
        self.commands: list[str] = []
        self.logged: list[str] = []

    def run_shell_command(self, command: Any, **kwargs: Any) -> tuple[bool, Any]:
        self.commands.append(str(command))
        return True, None

    def log_styled(self, text: str, **kwargs: Any) -> None:
        self.logged.append(text)


@pytest.mark.parametrize("go", [True, False])
def test_a_host_the_gate_stops_releases_the_lock_preflight_took(
        fleet: Path, go: bool) -> None:
    records.set_verdict("r1", 0, {"go": go, "failures": 0 if go else 1, "allowed": 0})
    target = LockHost()
    assert gate.gate_passed(None, target, 1, 0) is go  # type: ignore[arg-type]
    assert target.commands == ([] if go else [lock.release_command(lock.owner())])


def node_commands(tarball: Path, releases: Path, me: str) -> str:
    """What a deploy ``me`` runs on a node to pre-stage: take the lock (preflight's operation),
    then the upload (here a copy) and the unpacking (the pre-stage operation), each only if
    the one before succeeded (pyinfra stops a host at its first failing operation)."""
    upload, unpack = ops._unpacked(str(tarball), str(releases), RELEASE)
    assert isinstance(upload, FileUploadCommand)
    return (f"{lock.take_command(me)} && cp {tarball} {upload.dest} && {unpack} && "
            f"{lock.release_command(me)}")


def test_two_deploys_prestaging_one_release_at_once_take_turns_by_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deploys pre-staging the same release on one node at the same moment would share
    ``.unpack-<id>`` and remove each other's work: the lock, taken before, lets one in and
    fails the other before its upload; the release ends unpacked whole."""
    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path / "fleet-deploy.lock"))
    monkeypatch.setattr(lock, "OWNER_FILE", str(tmp_path / "fleet-deploy.lock" / "owner"))
    tarball, releases = tmp_path / "release.tar.gz", tmp_path / "releases"
    (tmp_path / "site").mkdir()
    for index in range(200):
        (tmp_path / "site" / f"m{index}.py").write_text("x = 1\n" * 50)
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "site", arcname="site")
    releases.mkdir()
    for _ in range(5):
        commands = [node_commands(tarball, releases, f"ctl:{n}:run-{n}") for n in (1, 2)]
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(lambda command: subprocess.run(
                ["sh", "-c", command], capture_output=True, text=True, check=False), commands))
        codes = sorted(run.returncode for run in done)
        assert codes in ([0, 0], [0, 1]), done  # one at a time: both (in turn) or one of them
        for run in done:
            assert run.returncode == 0 or "node is locked by another deploy" in run.stderr
        assert sorted(path.name for path in releases.iterdir()) == [RELEASE]
        assert len(list((releases / RELEASE / "site").iterdir())) == 200
        assert not (tmp_path / "fleet-deploy.lock").exists()


def test_pyinfra_gets_the_setting_in_later_stages_of_a_deploy_only() -> None:
    options = rollout.RolloutOptions()
    assert rollout.pyinfra_command(["a"], options, stage=1, prestage=True)[-2:] == \
        ["--data", "prestage=true"]
    assert "prestage=true" not in rollout.pyinfra_command(["a"], options, stage=1)
    assert "prestage=true" not in rollout.pyinfra_command(["a"], options, stage=0,
                                                          prestage=True)
    back = rollout.RolloutOptions(action="rollback")
    assert "prestage=true" not in rollout.pyinfra_command(["a"], back, stage=1, prestage=True)


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A fleet repository whose stages run ``fake_stage``; returns the stages' commands."""
    (tmp_path / "inventory.py").write_text("")
    (tmp_path / "deploy.py").write_text("")
    shutil.copy(REPO / "registry.yaml", tmp_path / "registry.yaml")
    shutil.copytree(REPO / "souls", tmp_path / "souls")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path / "records"))
    monkeypatch.setenv(records.RUN_ID_ENV, "run-1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    monkeypatch.setenv("FAKE_STAGE_OUTCOMES", json.dumps({}))
    script_rollout(monkeypatch.setattr)
    commands: list[list[str]] = []
    scripted_command = rollout.pyinfra_command

    def recorded(*args: Any, **kwargs: Any) -> list[str]:
        command = scripted_command(*args, **kwargs)
        commands.append(command)
        return command

    monkeypatch.setattr(rollout, "pyinfra_command", recorded)
    return commands


@pytest.mark.parametrize(("setting", "flag", "staged"), [
    (None, [], False), (None, ["--prestage"], True), (True, [], True),
    (True, ["--no-prestage"], False), (False, ["--prestage"], True),
], ids=["default-off", "flag", "registry", "flag-overrides-registry", "flag-over-false"])
def test_the_flag_overrides_the_registry_setting(
        scripted: list[list[str]], setting: bool | None, flag: list[str],
        staged: bool) -> None:
    registry = Path("registry.yaml")
    if setting is not None:
        registry.write_text(registry.read_text().replace(
            "fleet:\n  name: sovereign\n",
            f"fleet:\n  name: sovereign\n  prestage: {str(setting).lower()}\n"))
        assert load_registry(registry).prestage is setting
    done = CliRunner().invoke(main, ["--registry", str(registry), "deploy", "--plain",
                                     "--batch", "1", *flag])
    assert done.exit_code == 0, done.output
    assert len(scripted) == 3  # the canary, then one worker per stage
    assert ["prestage=true" in command for command in scripted] == [False, staged, staged]


def test_the_help_names_the_flag() -> None:
    done = CliRunner().invoke(main, ["deploy", "--help"])
    assert "--prestage / --no-prestage" in done.output


def snapshot_releases(releases: Path, current: Path) -> NodeSnapshot:
    """The node snapshot's ``releases`` and ``current`` as the real snapshot command reads
    them from a local folder (``sh``)."""
    from deploys.facts import NodeState

    fact = NodeState()
    command = fact.command(paths=[str(releases)], user="nobody-here", unit="none.service",
                           current=str(current), releases_dir=str(releases),
                           keys_file=str(releases / "no-keys"))
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
    return fact.process(done.stdout.splitlines())


@pytest.mark.parametrize("killed", ["after-upload", "mid-unpack", "mid-upload"])
def test_a_prestage_killed_between_upload_and_unpack_is_never_used_and_redone_whole(
        tmp_path: Path, killed: str) -> None:
    """A deploy killed after its upload, in the middle of unpacking, or in the middle of
    the upload leaves ``.unpack-<id>.tar.gz`` (whole or cut) and maybe a half-filled
    ``.unpack-<id>``: the node's snapshot does not list the release (so the next deploy
    pre-stages it again, and ``fleet-nodectl switch`` refuses it), and the next deploy's
    upload and unpack leave it whole, with nothing of the first try."""
    tarball, releases = tmp_path / "release.tar.gz", tmp_path / "releases"
    (tmp_path / "site").mkdir()
    for index in range(50):
        (tmp_path / "site" / f"m{index}.py").write_text(f"x = {index}\n" * 50)
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "site", arcname="site")
    releases.mkdir()
    upload, unpack = ops._unpacked(str(tarball), str(releases), RELEASE)
    assert isinstance(upload, FileUploadCommand)
    whole = tarball.read_bytes()
    Path(upload.dest).write_bytes(whole if killed != "mid-upload" else whole[:len(whole) // 2])
    if killed == "mid-unpack":
        staging = releases / f".unpack-{RELEASE}" / "site"
        staging.mkdir(parents=True)
        (staging / "m0.py").write_text("half")
        (staging / "stray.py").write_text("from the first try")
    node = snapshot_releases(releases, tmp_path / "current")
    assert node["releases"] == [] and node["current"] is None
    ctx = SimpleNamespace(prestage=True, rollback=False, release=SimpleNamespace(id=RELEASE),
                          node=node)
    assert AgentContext.prestages(ctx)  # type: ignore[arg-type]  # staged again, whole
    Path(upload.dest).write_bytes(whole)  # the next deploy's upload
    done = subprocess.run(["sh", "-c", unpack], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in releases.iterdir()) == [RELEASE]
    site = releases / RELEASE / "site"
    assert sorted(path.name for path in site.iterdir()) == sorted(
        path.name for path in (tmp_path / "site").iterdir())
    assert (site / "m0.py").read_text() == "x = 0\n" * 50
    assert snapshot_releases(releases, tmp_path / "current")["releases"] == [RELEASE]
