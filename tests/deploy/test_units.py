"""Fast tests of the deploy's pure parts: release ids, masking, records, rollout planning,
preflight rules, node-side release switching and audit drift."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grimp
import pytest

from deploys import preflight
from deploys.audit import drift
from deploys.context import AgentContext
from deploys.services import BUILTIN_RUNTIME
from fleet.control import records
from fleet.control.expected import expected, judge
from fleet.control.release import (
    ENTRY_POINTS,
    broken_requested,
    content_hash,
    release_code,
    release_id,
    shipped_files,
)
from fleet.control.status import AgentStatus
from fleet.core.masking import MASK, Masker, mask_env, mask_env_pair
from fleet.core.registry import load_registry
from fleet.core.release_marker import Broken, running_release
from fleet.node import nodectl

REPO = Path(__file__).resolve().parents[2]


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def source_tree(tmp_path: Path) -> Path:
    """A tiny git repo with fleet/ (its core, node and control parts) and bus/, committed."""
    for package in ("fleet", "fleet/core", "fleet/node", "fleet/control", "bus"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(f"# {package}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_release_id_is_the_sha_then_dirty_with_content_hash(source_tree: Path) -> None:
    clean = release_id(source_tree, broken=Broken.NO)
    assert len(clean) == 12
    (source_tree / "fleet" / "__init__.py").write_text("# changed\n")
    dirty = release_id(source_tree, broken=Broken.NO)
    assert dirty == f"{clean}-dirty-{content_hash(source_tree)[:8]}"
    assert release_id(source_tree, broken=Broken.UNHEALTHY) == f"{dirty}-broken"


def test_release_ignores_changes_outside_shipped_packages(source_tree: Path) -> None:
    clean = release_id(source_tree, broken=Broken.NO)
    (source_tree / "notes.txt").write_text("not shipped\n")
    (source_tree / "fleet" / "control" / "__init__.py").write_text("# the controller's\n")
    assert release_id(source_tree, broken=Broken.NO) == clean
    (source_tree / "fleet" / "node" / "__init__.py").write_text("# a node's\n")
    assert release_id(source_tree, broken=Broken.NO) != clean


def test_shipped_files_skip_caches_and_the_controllers_code(source_tree: Path) -> None:
    (source_tree / "fleet" / "__pycache__").mkdir()
    (source_tree / "fleet" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    (source_tree / "fleet" / "__main__.py").write_text("# the CLI\n")
    assert [p.as_posix() for p in shipped_files(source_tree)] == [
        "bus/__init__.py", "fleet/__init__.py", "fleet/core/__init__.py",
        "fleet/node/__init__.py"]


def test_a_release_holds_everything_its_code_imports() -> None:
    """What a node runs imports nothing of ours the release leaves out (lazy imports too):
    the modules of the shipped files are closed under import."""
    shipped = {".".join(path.with_suffix("").parts).removesuffix(".__init__")
               for path in shipped_files(REPO) if path.suffix == ".py"}
    graph = grimp.build_graph("fleet", "bus", "deploys", exclude_type_checking_imports=True,
                              cache_dir=None)
    missing = {f"{module} -> {imported}" for module in shipped
               for imported in graph.find_modules_directly_imported_by(module)
               if imported.split(".")[0] in ("fleet", "bus", "deploys")
               and imported not in shipped}
    assert missing == set()
    assert {"fleet", "fleet.core.registry", "fleet.node.gateway.wsgi", "fleet.node.nodectl",
            "bus.web"} <= shipped and "fleet.control.release" not in shipped


def test_running_release_reads_the_release_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "fleet").mkdir(parents=True)
    (site / "RELEASE").write_text("abc123\n")
    assert running_release(str(site / "fleet" / "__init__.py")) == ("abc123", Broken.NO)
    for marker, kind in (("", Broken.UNHEALTHY), ("unhealthy\n", Broken.UNHEALTHY),
                         ("exit\n", Broken.EXIT), ("nonsense\n", Broken.UNHEALTHY)):
        (site / "BROKEN_RELEASE").write_text(marker)
        assert running_release(str(site / "fleet" / "__init__.py")) == ("abc123", kind)


def test_broken_release_kinds_have_their_own_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, kind in (("1", Broken.UNHEALTHY), ("yes", Broken.UNHEALTHY),
                        (" EXIT", Broken.EXIT), ("", Broken.NO), ("0", Broken.NO),
                        ("exit; rm", Broken.NO)):
        assert broken_requested({"FLEET_BROKEN_RELEASE": value}) is kind
        assert kind is Broken.NO or Broken.asked(kind.asked_with) is kind
    plain = release_id(REPO, broken=Broken.NO)
    assert [release_id(REPO, broken=kind) for kind in (Broken.UNHEALTHY, Broken.EXIT)] == [
        f"{plain}-broken", f"{plain}-broken-exit"]
    assert nodectl.release_id(f"{plain}-broken-exit") == f"{plain}-broken-exit"
    monkeypatch.setenv("FLEET_BROKEN_RELEASE", "exit")
    assert release_id(REPO) == f"{plain}-broken-exit"


def test_masker_hides_every_value_longest_first() -> None:
    mask = Masker(["s3cr3t", "s3cr3t-longer", ""])
    assert mask("a s3cr3t-longer b s3cr3t") == f"a {MASK} b {MASK}"
    assert mask.data({"k": ["x s3cr3t"]}) == {"k": [f"x {MASK}"]}


def test_mask_env_keeps_only_public_values() -> None:
    text = "FLEET_AGENT=a\nAPI_KEY=hunter2\n"
    assert mask_env(text, ["FLEET_AGENT"]) == f"FLEET_AGENT=a\nAPI_KEY={MASK}\n"


def test_records_merge_hosts_and_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(records.RECORDS_ENV, str(tmp_path))
    records.update_run("r1", kind="deploy")
    records.update_host("r1", "a", {"status": "ok", "note": "key=hunter2"}, Masker(["hunter2"]))
    records.update_host("r1", "b", {"status": "failed"})
    data = json.loads((tmp_path / "r1.json").read_text())
    assert data["kind"] == "deploy"
    assert data["hosts"] == {"a": {"status": "ok", "note": f"key={MASK}"},
                             "b": {"status": "failed"}}


@pytest.fixture
def registry():
    return load_registry(REPO / "registry.yaml")


GOOD = {"os": "debian", "os_like": "", "systemd": True, "python": (3, 11), "free_mb": 900,
        "skew_s": 0.1, "lock": ""}


@pytest.mark.parametrize(("change", "message"), [
    ({"os": "alpine"}, "OS 'alpine' is not Debian or Ubuntu"),
    ({"systemd": False}, "systemd is not running (no /run/systemd/system)"),
    ({"python": (3, 9)}, "python3 is 3.9, needs >= 3.11"),
    ({"python": ()}, "python3 is missing; install python3 (>= 3.11)"),
    ({"free_mb": 10}, "only 10 MiB free under /opt, needs 200 MiB"),
    ({"skew_s": 42.0}, "clock skew +42.0 s exceeds 10 s; sync the node's clock"),
])
def test_preflight_names_each_problem(change: dict, message: str) -> None:
    assert preflight.problems({**GOOD, **change}, "me:1:r") == ([message], "")


def test_preflight_lock_held_by_a_live_deploy() -> None:
    holder = f"elsewhere:1:run {time.time():.0f}"
    found, stale = preflight.problems({**GOOD, "lock": holder}, "me:1:r")
    assert stale == ""
    assert found and "is held by elsewhere:1:run" in found[0]
    old = f"elsewhere:1:run {time.time() - 7200:.0f}"
    assert preflight.problems({**GOOD, "lock": old}, "me:1:r") == ([], "elsewhere:1:run")


@pytest.fixture
def node_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(nodectl, "ROOT", tmp_path)
    monkeypatch.setattr(nodectl, "RELEASES", tmp_path / "releases")
    monkeypatch.setattr(nodectl, "CURRENT", tmp_path / "current")
    monkeypatch.setattr(nodectl, "HISTORY", tmp_path / "history")
    for release in ("111111111111", "222222222222", "333333333333"):
        (tmp_path / "releases" / release / "site").mkdir(parents=True)
    return tmp_path


def test_nodectl_switch_is_a_relative_symlink_and_history(node_root: Path) -> None:
    assert nodectl.switch("111111111111")["changed"] is True
    assert nodectl.switch("222222222222")["before"] == "111111111111"
    assert nodectl.switch("222222222222")["changed"] is False
    assert (node_root / "current").readlink() == Path("releases/222222222222")
    assert nodectl.previous_release() == "111111111111"
    with pytest.raises(SystemExit, match="release 999999999999 is not installed"):
        nodectl.switch("999999999999")


def test_nodectl_prune_keeps_current_and_newest(node_root: Path) -> None:
    for release in ("111111111111", "222222222222", "333333333333", "111111111111"):
        nodectl.switch(release)
    assert nodectl.prune(keep=2) == {"kept": ["111111111111", "333333333333"],
                                     "removed": ["222222222222"]}
    assert not (node_root / "releases" / "222222222222").exists()


def test_nodectl_prune_removes_prestaged_unused_releases_first_never_current(
        node_root: Path) -> None:
    """Releases pre-staged by rollouts that stopped at their gate (never current, so not in
    the history), more of them than kept: the current release stays, then the ones used."""
    for release in ("111111111111", "222222222222"):
        nodectl.switch(release)
    for release in ("aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3", "aaaaaaaaaaa4"):
        (node_root / "releases" / release / "site").mkdir(parents=True)
    (node_root / "releases" / ".unpack-aaaaaaaaaaa5").mkdir()  # an unpack cut short
    pruned = nodectl.prune(keep=3)
    assert pruned["kept"] == ["222222222222", "111111111111", "aaaaaaaaaaa4"]
    assert nodectl.current_release() == "222222222222"
    left = sorted(path.name for path in (node_root / "releases").iterdir())
    assert left == sorted(pruned["kept"])
    assert nodectl.prune(keep=1)["kept"] == ["222222222222"]


def test_nodectl_prune_removes_the_upload_of_a_deploy_killed_before_unpacking(
        node_root: Path) -> None:
    """A deploy killed between upload and unpack leaves ``.unpack-<id>.tar.gz`` (a file, a
    whole release tarball) and maybe a half-filled ``.unpack-<id>``: the release is not
    installed (no folder of its own), and the next prune removes both."""
    nodectl.switch("111111111111")
    releases = node_root / "releases"
    (releases / ".unpack-aaaaaaaaaaa5.tar.gz").write_bytes(b"\x1f\x8b" + b"x" * 4096)
    (releases / ".unpack-aaaaaaaaaaa5" / "site").mkdir(parents=True)
    (releases / ".unpack-aaaaaaaaaaa6").symlink_to("111111111111")  # never followed
    assert nodectl.prune(keep=3)["removed"] == []
    assert sorted(path.name for path in releases.iterdir()) == [
        "111111111111", "222222222222", "333333333333"]
    assert (releases / "111111111111" / "site").is_dir()


def test_nodectl_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    expected = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], check=True,
                              capture_output=True, text=True).stdout.split()[1]
    assert nodectl.fingerprint((tmp_path / "k.pub").read_text()) == expected


def test_audit_drift_lists_every_difference(registry) -> None:
    agent = registry.get("bezalel")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
    facts = {"release": "old", "soul_sha256": ctx.soul_sha256(), "config_hash": "x",
             "unit": {"ActiveState": "failed", "UnitFileState": "enabled"}, "ports": [22],
             "health_status": 503, "health": {"problems": ["soul missing"]},
             "files": {"/etc/fleet/bezalel/env": {"mode": "0644", "user": "root"},
                       "/etc/fleet/bezalel/soul.md": {"mode": "0444", "user": "root"},
                       "/var/lib/fleet/bezalel": {"mode": "0700", "user": "bezalel"}}}
    assert drift(facts, ctx, "new") == [
        "release is old, expected new",
        f"config.json is x, the registry's is {ctx.config_hash()[:12]}",
        "fleet-agent-bezalel.service is failed, expected active",
        "nothing listens on gateway port 8646",
        "/health answers 503: soul missing",
        "/etc/fleet/bezalel/env is 0644 root, expected 0600 root",
    ]


def test_audit_and_status_judge_the_drift_triple_alike(registry) -> None:
    """One comparison (:func:`fleet.control.expected.compare`): the audit's drift lines are the ones
    ``fleet status`` shows for the same node; only a hash the node lacks differs (the audit:
    the file is missing, drift; a probe: it did not say, unknown)."""
    agent = registry.get("bezalel")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
    wanted = expected(registry, agent)
    node = {"release": "old", "soul_sha256": "b" * 64, "config_hash": "d" * 64}
    probe = AgentStatus(agent="bezalel", role="worker", host="h", ssh="ok", health="ok", **node)
    lines = judge(probe, wanted, "new").drift
    assert len(lines) == 3 and drift(node, ctx, "new")[:3] == list(lines)
    missing = judge(AgentStatus(agent="bezalel", role="worker", host="h", ssh="ok",
                                health="ok", release="new", config_hash=wanted.config_hash),
                    wanted, "new")
    assert (missing.state, missing.soul) == ("ok", "unknown")
    assert drift({"release": "new", "config_hash": wanted.config_hash}, ctx, "new")[0] == (
        f"soul.md is -, the soul file is {ctx.soul_sha256()[:12]}")


def test_mask_env_pair_marks_changed_secrets_without_values() -> None:
    old, new = mask_env_pair("FLEET_AGENT=a\nKEY=one\nSAME=x\n", "FLEET_AGENT=a\nKEY=two\nSAME=x\n",
                             ["FLEET_AGENT"])
    assert old == f"FLEET_AGENT=a\nKEY={MASK}\nSAME={MASK}\n"
    assert new == f"FLEET_AGENT=a\nKEY={MASK} (changed)\nSAME={MASK}\n"


@pytest.mark.slow
def test_release_artifact_has_deps_and_code_and_is_cached() -> None:
    import tarfile

    from fleet.control.release import build_release

    build_release.cache_clear()
    first = build_release(REPO, broken=Broken.NO)
    with tarfile.open(first.path) as tar:
        names = set(tar.getnames())
        release_file = tar.extractfile("site/RELEASE")
        assert release_file is not None and release_file.read().decode().strip() == first.id
    assert {"site/flask/__init__.py", "site/gunicorn/__init__.py", "site/requests/__init__.py",
            "site/fleet/node/gateway/health.py", "site/bus/__init__.py"} <= names
    assert any(name.startswith("site/yaml/_yaml.cpython-311-x86_64-linux-gnu") for name in names)
    mtime = first.path.stat().st_mtime
    build_release.cache_clear()
    second = build_release(REPO, broken=Broken.NO)
    assert (second.path, second.path.stat().st_mtime) == (first.path, mtime)


def test_launcher_entry_points_match_importlib() -> None:
    from importlib import metadata

    from fleet.control.pyinfra_launcher import cached_entry_points

    for group in ("pyinfra.connectors", "console_scripts", "no.such.group"):
        assert list(cached_entry_points(group=group)) == list(metadata.entry_points(group=group))
    assert list(cached_entry_points(name="pyinfra")) == list(metadata.entry_points(name="pyinfra"))


def test_launcher_runs_pyinfras_cli() -> None:
    import sys

    done = subprocess.run([sys.executable, "-m", "fleet.control.pyinfra_launcher", "--version"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "pyinfra" in (done.stdout + done.stderr).lower()


def test_node_state_reads_preflight_basics_in_the_same_round_trip() -> None:
    from deploys.facts import NodeBasics, NodeState

    fact = NodeState()
    args = dict(paths=["/opt/fleet"], user="a", unit="u", current="/opt/fleet/current",
                releases_dir="/opt/fleet/releases", keys_file="/root/.ssh/authorized_keys")
    assert "basics|" not in fact.command(**args)
    command = fact.command(**args, lock_dir="/run/fleet-deploy.lock")
    assert "basics|" in command and "/run/fleet-deploy.lock/owner" in command
    epoch = f"{time.time():.3f}"
    state = fact.process(["path|/opt/fleet|directory|root|root|755|1764290000.250000000",
                          "user", "path|/etc/fleet/a/env|regular empty file|root|a|640",
                          f"sha|{'e3' * 32}|/etc/fleet/a/env", f"sha|{'00' * 32}|/elsewhere",
                          "basics|os=debian", "basics|os_like=", "basics|systemd=yes",
                          "basics|python=Python 3.11.2", "basics|free_kb=1048576",
                          f"basics|epoch={epoch}", "basics|lock=",
                          "unit|ActiveState=active", "unit|UnitFileState=enabled",
                          "unit|ActiveEnterTimestamp=Sat 2025-11-29 00:33:20.500000 UTC",
                          "unit|NeedDaemonReload=no"])
    assert state["paths"]["/opt/fleet"] == {"type": "directory", "user": "root",
                                            "group": "root", "mode": "755", "sha256": None,
                                            "mtime": 1764290000.25}
    assert state["paths"]["/etc/fleet/a/env"]["sha256"] == "e3" * 32
    assert state["paths"]["/etc/fleet/a/env"]["type"] == "regular file"
    assert "/elsewhere" not in state["paths"] and state["user"] is True
    assert state["unit"] == {"active": "active", "enabled": "enabled",
                             "started": 1764376400.5, "need_reload": False}
    basics = state["basics"]
    assert (basics["os"], basics["systemd"], basics["python"], basics["free_mb"]) == (
        "debian", True, (3, 11), 1024)
    assert abs(basics["skew_s"]) < 5 and basics["lock"] == ""
    assert preflight.problems(basics, "me")[0] == []
    for odd in ("Python 3.११.2", "3 11", "Python 3", "Python 3.11.2\nx", ""):
        assert NodeBasics().process([f"python={odd}"])["python"] == (), odd


def test_files_written_after_the_unit_started_need_a_restart() -> None:
    """A deploy that failed between writing config and restarting leaves files newer than
    the running unit: the next deploy's snapshot names them (and restarts), none otherwise."""
    from deploys.facts import NodeState, newer_than_unit

    def node(active: str, started: str) -> dict[str, Any]:
        return NodeState().process([
            "path|/etc/fleet/a/config.json|regular file|root|a|640|1764290010.000000000",
            "path|/etc/fleet/a/soul.md|regular file|root|root|444|1764289990.000000000",
            f"unit|ActiveState={active}", f"unit|ActiveEnterTimestamp={started}"])

    paths = ["/etc/fleet/a/config.json", "/etc/fleet/a/soul.md", "/opt/fleet/current"]
    started = "Sat 2025-11-29 00:33:20.000000 UTC"  # 1764376400: after both files
    assert newer_than_unit(node("active", started), paths) == []
    earlier = "Fri 2025-11-28 00:33:20.000000 UTC"  # 1764290000: before config.json
    assert newer_than_unit(node("active", earlier), paths) == ["/etc/fleet/a/config.json"]
    assert newer_than_unit(node("failed", earlier), paths) == []  # it is started, not restarted
    assert newer_than_unit(node("active", ""), paths) == []  # never started: nothing known


def test_lock_blocks_a_live_holder_and_takes_over_a_dead_one() -> None:
    from deploys import lock

    now = time.time()
    assert lock.blocker("", "me:1:r", now) == (None, "")
    assert lock.blocker(f"me:1:r {now:.0f}", "me:1:r", now) == (None, "")
    live = f"elsewhere:1:run {now:.0f}"
    assert lock.blocker(live, "me:1:r", now) == (
        f"deploy lock {lock.LOCK_DIR} is held by {live}; wait for that deploy or remove the "
        "lock if it is dead", "")
    assert lock.blocker(f"elsewhere:1:run {now - 7200:.0f}", "me:1:r", now) == (
        None, "elsewhere:1:run")
    assert lock.stale("elsewhere:1:run garbage", now)


def test_lock_release_removes_only_its_own_lock(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from deploys import lock

    lock_dir = tmp_path / "fleet-deploy.lock"
    monkeypatch.setattr(lock, "LOCK_DIR", str(lock_dir))
    monkeypatch.setattr(lock, "OWNER_FILE", str(lock_dir / "owner"))
    take = subprocess.run(["sh", "-c", lock.take_command("me:1:r")], check=False)
    assert take.returncode == 0 and (lock_dir / "owner").read_text().startswith("me:1:r ")
    other = subprocess.run(["sh", "-c", lock.take_command("other:2:s")], capture_output=True,
                           text=True, check=False)
    assert other.returncode == 1 and "node is locked by another deploy: me:1:r" in other.stderr
    subprocess.run(["sh", "-c", lock.release_command("other:2:s")], check=True)
    assert lock_dir.exists()
    subprocess.run(["sh", "-c", lock.release_command("me:1:r")], check=True)
    assert not lock_dir.exists()


def test_a_lock_left_without_its_owner_does_not_lock_the_node_for_good(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deploy that died between making the lock folder and writing its owner (or could not
    write it: /run full) left an ownerless lock: preflight reads it as free, so the next
    deploy must be able to take it, not fail on it until someone removes it by hand. A lock
    with its owner still keeps every other deploy out, and a take never leaves the lock
    ownerless (the owner is written before the lock appears)."""
    from deploys import lock

    lock_dir = tmp_path / "fleet-deploy.lock"
    monkeypatch.setattr(lock, "LOCK_DIR", str(lock_dir))
    monkeypatch.setattr(lock, "OWNER_FILE", str(lock_dir / "owner"))
    lock_dir.mkdir()
    assert lock.blocker("", "me:1:r", 0.0) == (None, "")  # what preflight makes of it
    take = subprocess.run(["sh", "-c", lock.take_command("me:1:r")], capture_output=True,
                          text=True, check=False)
    assert take.returncode == 0, take.stderr
    assert (lock_dir / "owner").read_text().startswith("me:1:r ")
    assert subprocess.run(["sh", "-c", lock.take_command("me:1:r")], check=False).returncode == 0
    other = subprocess.run(["sh", "-c", lock.take_command("other:2:s")], capture_output=True,
                           text=True, check=False)
    assert other.returncode == 1 and "node is locked by another deploy: me:1:r" in other.stderr
    assert (lock_dir / "owner").read_text().startswith("me:1:r ")
    subprocess.run(["sh", "-c", lock.release_command("me:1:r")], check=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no temporary folder left


def test_unit_template_ships_in_the_package(registry) -> None:
    from deploys.services import unit_text

    agent = registry.get("bezalel")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
    text = unit_text(ctx)
    assert "User=bezalel" in text and "EnvironmentFile=/etc/fleet/bezalel/env" in text
    assert not (REPO / "templates").exists()


def test_the_gateways_worker_count_has_one_owner(registry) -> None:
    """The unit the deploy writes and ``fleet gateway serve`` run the same number of gunicorn
    workers: :data:`fleet.core.serving.GATEWAY_WORKERS`, named nowhere else."""
    from deploys.services import unit_text
    from fleet.cli.gateway import serve
    from fleet.core.serving import GATEWAY_WORKERS

    agent = registry.get("bezalel")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
    start = next(line for line in unit_text(ctx).splitlines() if line.startswith("ExecStart="))
    assert f" --workers {GATEWAY_WORKERS} " in start
    option = next(param for param in serve.params if param.name == "workers")
    assert option.default == GATEWAY_WORKERS
    template = (REPO / "fleet/control/templates/fleet-agent.service.j2").read_text()
    assert "--workers {{ workers }}" in template


class Ran:
    """An operation's result as the record reads it (pyinfra's OperationMeta)."""

    def __init__(self, changed: bool, complete: bool = True) -> None:
        self.will_change = changed
        self.stdout = ""
        self.changed, self.complete = changed, complete

    def is_complete(self) -> bool:
        return self.complete

    def did_change(self) -> bool:
        return self.changed


def test_record_lists_exactly_this_hosts_changed_operations(registry) -> None:
    agent = registry.get("bezalel")
    ctx = AgentContext(agent=agent, registry=registry, soul_source=registry.soul_path(agent))
    ctx.track("Agent soul", Ran(True))
    ctx.track("Agent unit file", Ran(False))
    ctx.track("Agent config.json", Ran(True))
    ctx.track("Agent service restarted", Ran(True, complete=False))  # not run (host failed)
    assert ctx.changed() == ["Agent soul", "Agent config.json"]
    assert ctx.planned() == ["Agent soul", "Agent config.json", "Agent service restarted"]


def test_the_units_name_only_entry_points_every_release_has() -> None:
    """The gateway unit's config and app and the built-in runtime's module are the entry
    points written into each release (releases before the layout have them as modules)."""
    unit = (REPO / "fleet/control/templates/fleet-agent.service.j2").read_text(encoding="utf-8")
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    config = start.split("--config python:", 1)[1].split()[0]
    app = start.split()[-1].split(":")[0]
    runtime = BUILTIN_RUNTIME[BUILTIN_RUNTIME.index("-m") + 1]
    named = {f"{config.replace('.', '/')}.py", f"{app.replace('.', '/')}.py",
             f"{runtime.replace('.', '/')}/__main__.py"}
    assert named <= set(ENTRY_POINTS)
    assert not [path for path in ENTRY_POINTS if (REPO / path).exists()]  # no module shadowed


def test_the_entry_points_run_the_node_code(tmp_path: Path) -> None:
    site = release_code(REPO, tmp_path / "release")
    (tmp_path / "registry.yaml").write_text("""\
fleet: {name: t}
wizards:
  bezalel:
    role: worker
    host: 127.0.0.1
    runtime: builtin
    model: test/m
    provider: {base_url: 'http://127.0.0.1:9/v1', api_key: MOCK_API_KEY}
    config: {max_tokens: lots}
""")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "FLEET_AGENT": "bezalel",
           "FLEET_REGISTRY": str(tmp_path / "registry.yaml"),
           "FLEET_STATE_DIR": str(tmp_path / "state")}
    runtime = subprocess.run([sys.executable, "-m", "fleet.runtime"], capture_output=True,
                             text=True, env=env, timeout=60, check=False, cwd=tmp_path)
    assert runtime.returncode == 1, runtime.stderr
    assert "config: max_tokens 'lots' is not a whole number" in runtime.stderr
    probe = ("import fleet.serving as entry, fleet.core.serving as core, fleet.gateway.wsgi as w;"
             "import fleet.node.gateway.wsgi as n;"
             "names = [k for k in vars(core) if not k.startswith('_')];"
             "assert all(getattr(entry, k) is getattr(core, k) for k in names), names;"
             "assert w.app is n.app; print(w.app.config['AGENT'], entry.__file__)")
    valid = (tmp_path / "registry.yaml").read_text().replace("    config: {max_tokens: lots}\n", "")
    (tmp_path / "valid.yaml").write_text(valid)
    gateway = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={**env, "FLEET_REGISTRY": str(tmp_path / "valid.yaml")},
                             timeout=60, check=False, cwd=tmp_path)
    assert gateway.returncode == 0, gateway.stderr
    assert gateway.stdout.split() == ["bezalel", str(site / "fleet" / "serving.py")]


def test_node_state_lists_the_agents_schedule_units_and_their_timers() -> None:
    """The snapshot lists every schedule unit file of the agent (a glob, so one the registry
    dropped is found) and the state of the registry's timers (``systemctl show`` blocks)."""
    from deploys.facts import NodeState

    fact = NodeState()
    args = dict(paths=["/opt/fleet"], user="a", unit="u", current="/opt/fleet/current",
                releases_dir="/opt/fleet/releases", keys_file="/root/.ssh/authorized_keys")
    assert "schedule|" not in fact.command(**args) and "timer|" not in fact.command(**args)
    command = fact.command(**args, schedule_glob="/etc/systemd/system/fleet-schedule-a_",
                           timers=("fleet-schedule-a_x.timer",))
    assert "for f in /etc/systemd/system/fleet-schedule-a_*; do" in command
    assert "systemctl show u fleet-schedule-a_x.timer --timestamp=us+utc -p Id" in command
    state = fact.process([
        "schedule|/etc/systemd/system/fleet-schedule-a_x.service",
        "schedule|/etc/systemd/system/fleet-schedule-a_old.timer",
        "timer|ActiveState=active", "timer|UnitFileState=enabled",
        "timer|Id=fleet-schedule-a_x.timer", "timer|",
        "timer|Id=fleet-schedule-a_y.timer", "timer|ActiveState=inactive",
        "timer|UnitFileState="])
    assert state["schedules"] == {
        "files": ["/etc/systemd/system/fleet-schedule-a_x.service",
                  "/etc/systemd/system/fleet-schedule-a_old.timer"],
        "timers": {"fleet-schedule-a_x.timer": {"active": "active", "enabled": "enabled"},
                   "fleet-schedule-a_y.timer": {"active": "inactive", "enabled": ""}}}
    assert fact.process([])["schedules"] == {"files": [], "timers": {}}
