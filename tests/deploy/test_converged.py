"""A converged host plans only its checks (``AgentContext.converged``): the probe runs the
deploy's phases with every operation decided from the node's snapshot, planning, logging and
recording nothing, and says "converged" exactly when the full plan would change nothing.

The property test draws node snapshots around a converged one (files changed, modes, owners,
units stopped or disabled, releases, links, keys, leftovers, a stale daemon-reload, a file the
running agent never loaded) for every runtime kind, and compares the probe with the full plan
evaluated from the same snapshot."""

from __future__ import annotations

import ast
import copy
import runpy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyinfra.api import Config, HiddenValue
from pyinfra.context import ctx_host, ctx_state
from pyinfra.operations import apt, files, server, systemd

from deploys import ops
from deploys.context import AgentContext
from deploys.facts import NodeSnapshot, PathInfo, empty_snapshot
from fleet.control.release import Release
from fleet.control.secrets import Secrets
from fleet.core.digests import text_sha256
from fleet.core.masking import Masker
from fleet.core.registry import Registry, load_registry

REPO = Path(__file__).resolve().parents[2]
PHASES = sorted((REPO / "deploys").glob("*.py"))
CHECKS = {"earlier_stages_passed", "lock_taken", "agent_verified", "agent_audited"}
"""The checks, planned with ``ctx.check``: the gate, the lock, verify, the audit."""
BUILTINS = {"apt": apt, "files": files, "server": server, "systemd": systemd}
REGISTRY = """\
fleet: {{name: t}}
wizards:
  boss: {{host: 10.0.0.1, role: orchestrator, model: m, runtime: builtin,
          provider: {{base_url: "http://10.0.0.9:8080/v1", api_key: OPENROUTER_API_KEY}},
          schedules: {{nightly: {{"on": "*-*-* 02:00:00", prompt: "report"}}}}}}
  plain: {{host: 10.0.0.2, role: worker, model: m, runtime: none,
           authorized_keys: ["ssh-ed25519 {key} op@laptop"]}}
  own: {{host: 10.0.0.3, role: worker, model: m,
         runtime: {{command: [python3, bot/main.py], ship: [bot/main.py, bot/lib/util.py]}}}}
"""
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIG1e5mNw2Hg0bYc0hWQ6cIYd0m3qk4k1r5ZQpA0V5R7q"


class Ran:
    """What the phases read of an operation the full plan evaluated."""

    def __init__(self, changed: bool) -> None:
        self.will_change = self.changed = changed
        self.stdout = ""

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return self.changed


class FullPlan(AgentContext):
    """The context with every operation evaluated instead of planned (pyinfra's will_change):
    a snapshot operation by running its function on the snapshot, one of pyinfra's own as a
    change (the phases plan those only when something changes). Records what each wants."""

    wanted: list[tuple[str, dict[str, Any]]]
    changing: list[str]

    def plan(self, operation: Callable[..., Any], name: str, **arguments: Any) -> Any:
        if self.probing:
            return super().plan(operation, name, **arguments)
        self.wanted.append((getattr(operation, "__name__", ""), arguments))
        function = ops.SNAPSHOT_OPERATIONS.get(operation)
        changed = function is None or any(True for _ in function(**arguments))
        if changed:
            self.changing.append(name)
        return self.track(name, Ran(changed))


@pytest.fixture(autouse=True)
def release(monkeypatch: pytest.MonkeyPatch) -> None:
    """The release the deploy brings, without building one."""
    built = Release("fedcba987654", Path("release.tar.gz"))
    monkeypatch.setattr(AgentContext, "release", property(lambda self: built))


def write_fleet(root: Path) -> Path:
    """``REGISTRY`` in ``root`` with its souls and shipped files; the registry's path."""
    (root / "registry.yaml").write_text(REGISTRY.format(key=KEY))
    (root / "souls").mkdir()
    for name in ("boss", "plain", "own"):
        (root / "souls" / f"{name}.md").write_text(f"# {name}\n")
    (root / "bot" / "lib").mkdir(parents=True)
    (root / "bot" / "main.py").write_text("print('hi')\n")
    (root / "bot" / "lib" / "util.py").write_text("X = 1\n")
    return root / "registry.yaml"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return load_registry(write_fleet(tmp_path_factory.mktemp("fleet")))


class FakeHost:
    """What the phases and operations ask of pyinfra's host while planning."""

    name = "node"
    print_prefix = "[node] "
    current_deploy_name = None
    current_deploy_kwargs = None
    current_deploy_data = None
    in_deploy = False

    def __init__(self) -> None:
        self.data = SimpleNamespace()
        self.noops: list[str] = []

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log(self, message: str, log_func: Any = None) -> None:
        raise AssertionError(f"logged while planning: {message}")

    @contextmanager
    def deploy(self, name: str, kwargs: Any, data: Any, in_deploy: bool = True
               ) -> Iterator[None]:
        yield


@contextmanager
def planning() -> Iterator[FakeHost]:
    host = FakeHost()
    state = SimpleNamespace(config=Config(), is_executing=False, check_for_changes=False)
    with ctx_state.use(state), ctx_host.use(host):
        yield host


def phases(ctx: AgentContext) -> Callable[[], object]:
    """deploy.py's ``changes``: the phases in their order, for ``ctx``."""
    source = (REPO / "deploy.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    func = next(node for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and node.name == "changes")
    module = ast.Module(body=[*(node for node in tree.body
                                if isinstance(node, ast.ImportFrom | ast.Import)), func],
                        type_ignores=[])
    namespace: dict[str, Any] = {"ctx": ctx}
    exec(compile(module, "deploy.py", "exec"), namespace)  # our own deploy.py
    return namespace["changes"]  # type: ignore[no-any-return]


def context(registry: Registry, name: str, node: NodeSnapshot) -> FullPlan:
    agent = registry.get(name)
    ctx = FullPlan(agent=agent, registry=registry, soul_source=registry.soul_path(agent),
                   secrets=Secrets(fleet={"OPENROUTER_API_KEY": "sk-test-1"}))
    ctx.node = node
    ctx.wanted, ctx.changing = [], []
    return ctx


def converged_node(registry: Registry, name: str) -> NodeSnapshot:
    """The snapshot of a node where every operation of the plan is done: what each one
    wants, as the snapshot would show it."""
    ctx = context(registry, name, empty_snapshot())
    with planning():
        phases(ctx)()
    node = empty_snapshot()
    node.update(user=True, group=True, links={})
    node["unit"] = {"active": "active", "enabled": "enabled", "started": 100.0,
                    "need_reload": False}

    def file(user: str, group: str, mode: str, sha: str | None = None,
             kind: str = "regular file") -> PathInfo:
        return {"type": kind, "user": user, "group": group, "mode": mode.lstrip("0"),
                "sha256": sha, "mtime": 1.0}

    for op, args in ctx.wanted:
        if op in ("managed_file", "secret_file"):
            content = args["content"]
            text = content.unmask() if isinstance(content, HiddenValue) else content
            node["paths"][args["dest"]] = file(args["user"], args["group"],
                                               args.get("mode", "600"), text_sha256(text))
        elif op == "directories":
            for path, user, group, mode in args["specs"]:
                node["paths"][path] = file(user, group, mode, kind="directory")
        elif op == "release_unpacked":
            node["releases"].append(args["release_id"])
        elif op == "release_current":
            node["current"] = args["release_id"]
        elif op == "authorized_keys_added":
            node["authorized_keys"] = list(args["keys"])
        elif op == "symlink":
            node["paths"][args["path"]] = file("root", "root", "777", kind="symbolic link")
            node.setdefault("links", {})[args["path"]] = args["target"]
        elif op in ("unit_running", "timers_running"):
            units = [args["unit"]] if op == "unit_running" else [u for u, _ in args["timers"]]
            if op == "timers_running" or args.get("listed"):
                for unit in units:
                    node["schedules"]["timers"][unit] = {"active": "active",
                                                         "enabled": "enabled"}
        elif op in ("agent_account", "releases_pruned", "daemon_reload", "shell", "service"):
            pass  # nothing left to want (pyinfra's own: planned because something changes)
        else:
            raise AssertionError(f"a converged node has no {op}: {args}")
    node["schedules"]["files"] = [path for path in node["paths"]
                                  if "/fleet-schedule-" in path]
    return node


def probe_and_plan(registry: Registry, name: str, node: NodeSnapshot
                   ) -> tuple[bool, list[str], FakeHost]:
    """(the probe's verdict, the full plan's changing operations, what was logged)."""
    ctx = context(registry, name, copy.deepcopy(node))
    with planning() as host:
        converged = ctx.converged(phases(ctx))
        assert ctx.changes == [] and host.noops == []  # nothing planned, kept or logged
        full = context(registry, name, copy.deepcopy(node))
        phases(full)()
    if not converged:
        assert ctx.unconverged  # the first change it met
    return converged, full.changing, host


AGENTS = ("boss", "plain", "own")


@pytest.mark.parametrize("name", AGENTS)
def test_a_converged_node_is_probed_converged_and_a_bare_one_is_not(
        registry: Registry, name: str) -> None:
    converged, changing, _ = probe_and_plan(registry, name, converged_node(registry, name))
    assert (converged, changing) == (True, [])
    converged, changing, _ = probe_and_plan(registry, name, empty_snapshot())
    assert not converged and changing


def mutations(node: NodeSnapshot) -> st.SearchStrategy[list[Callable[[NodeSnapshot], None]]]:
    """Changes of a converged snapshot, each a thing some phase must act on (or not)."""
    paths = sorted(node["paths"])

    def drop(path: str) -> Callable[[NodeSnapshot], None]:
        return lambda n: n["paths"].pop(path, None)

    def field(path: str, key: str, value: Any) -> Callable[[NodeSnapshot], None]:
        return lambda n: n["paths"][path].__setitem__(key, value) if path in n["paths"] \
            else None

    def unit(key: str, value: Any) -> Callable[[NodeSnapshot], None]:
        return lambda n: n["unit"].__setitem__(key, value)

    def top(key: str, value: Any) -> Callable[[NodeSnapshot], None]:
        return lambda n: n.__setitem__(key, value)  # type: ignore[misc]

    def listed(unit_name: str, key: str, value: str) -> Callable[[NodeSnapshot], None]:
        return lambda n: n["schedules"]["timers"].setdefault(unit_name, {}).__setitem__(
            key, value)

    def leftover(path: str) -> Callable[[NodeSnapshot], None]:
        def apply(n: NodeSnapshot) -> None:
            n["paths"][path] = {"type": "regular file", "user": "root", "group": "root",
                                "mode": "644", "sha256": "0" * 64, "mtime": 1.0}
            if "fleet-schedule-" in path:
                n["schedules"]["files"].append(path)
        return apply

    units = sorted(node["schedules"]["timers"])
    one = st.one_of(
        st.sampled_from(paths).map(drop),
        st.builds(field, st.sampled_from(paths), st.just("sha256"), st.just("f" * 64)),
        st.builds(field, st.sampled_from(paths), st.just("mode"), st.sampled_from(["600",
                                                                                   "777"])),
        st.builds(field, st.sampled_from(paths), st.just("user"), st.just("nobody")),
        st.builds(field, st.sampled_from(paths), st.just("mtime"), st.just(500.0)),
        st.builds(unit, st.sampled_from(["active", "enabled"]), st.just("inactive")),
        st.builds(unit, st.just("need_reload"), st.just(True)),
        st.builds(top, st.sampled_from(["user", "group"]), st.just(False)),
        st.builds(top, st.just("current"), st.sampled_from([None, "0123456789ab"])),
        st.builds(top, st.just("releases"), st.sampled_from([[], ["a", "b", "c", "d", "e",
                                                                  "f"]])),
        st.builds(top, st.just("authorized_keys"), st.just([])),
        st.builds(top, st.just("links"), st.just({})),
        *([st.builds(listed, st.sampled_from(units), st.sampled_from(["active", "enabled"]),
                     st.just("inactive"))] if units else []),
        st.sampled_from(["/etc/systemd/system/fleet-schedule-X_old.timer",
                         "/etc/systemd/system/fleet-runtime-X.service"]).map(leftover),
    )
    return st.lists(one, min_size=0, max_size=3)


@pytest.mark.parametrize("name", AGENTS)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_probe_says_converged_exactly_when_the_full_plan_changes_nothing(
        registry: Registry, name: str, data: st.DataObject) -> None:
    base = converged_node(registry, name)
    node = copy.deepcopy(base)
    for change in data.draw(mutations(base)):
        change(node)
    for path in ("/etc/systemd/system/fleet-runtime-X.service",):  # this agent's, if named so
        if path in node["paths"]:
            node["paths"][path.replace("X", name)] = node["paths"].pop(path)
    for path in list(node["paths"]):
        if "fleet-schedule-X_" in path:
            node["paths"][path.replace("X_", f"{name}_")] = node["paths"].pop(path)
            files = node["schedules"]["files"]
            files[files.index(path)] = path.replace("X_", f"{name}_")
    converged, changing, _ = probe_and_plan(registry, name, node)
    assert converged is (changing == []), changing


def test_the_probe_plans_nothing_and_says_nothing() -> None:
    """Probing a file that differs: a change, with no diff shown or recorded and no noop."""
    recorded: dict[str, list[str]] = {}
    node = empty_snapshot()
    diffs = ops.DiffReport(Masker([]), recorded.__setitem__)
    arguments = {"dest": "/etc/x", "content": "a\n", "user": "root", "group": "root",
                 "mode": "644", "node": node, "diffs": diffs}
    host = FakeHost()
    config = Config()
    config.DIFF = True
    state = SimpleNamespace(config=config, is_executing=False)
    with ctx_state.use(state), ctx_host.use(host):
        with pytest.raises(ops.Changes):
            ops.probe(ops.managed_file, "File", arguments)
        node["paths"]["/etc/x"] = {"type": "regular file", "user": "root", "group": "root",
                                   "mode": "644", "sha256": text_sha256("a\n"), "mtime": 0.0}
        assert ops.probe(ops.managed_file, "File", arguments) is ops.UNCHANGED
    assert recorded == {} and host.noops == []
    with pytest.raises(ops.Changes, match="not decided from the node's snapshot"):
        ops.probe(runpy.run_path, "Built-in", {})  # not a snapshot operation
    with pytest.raises(ops.Changes):
        ops.probe(ops.managed_file, "Conditional", {**arguments, "_if": lambda: False})


def test_every_operation_of_the_phases_is_planned_through_the_context() -> None:
    """``ctx.plan`` (probed when converging) or ``ctx.check`` (the checks): an operation
    called directly would be planned by the probe too, so none is."""
    operations = {name for name, value in vars(ops).items()
                  if callable(value) and value in ops.SNAPSHOT_OPERATIONS}
    direct = []
    for path in [*PHASES, REPO / "deploy.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "pyinfra.operations" for alias in node.names}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            called = ast.unparse(node.func)
            module, _, attribute = called.rpartition(".")
            builtin = getattr(BUILTINS.get(module), attribute, None) \
                if module in imported else None
            if attribute in operations | CHECKS or callable(builtin):
                direct.append(f"{path.name}:{node.lineno}: {called}")
    assert direct == []
