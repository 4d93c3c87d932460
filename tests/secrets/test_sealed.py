"""The sealed secrets file (``fleet secrets``, age): it opens with the ``age`` tool and the
``age`` tool's files open with it; an edit killed at any step leaves the old or the new sealed
file, never plaintext on disk; every way it cannot be opened is one line naming the file and
the fix, and nothing is deployed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.control.sealed import RECIPIENT_RE, SealedError
from fleet.control.sealed_edit import EDIT_PREFIX, memory_dir
from fleet.control.secrets import load_secrets
from fleet.core.errors import RegistryError
from fleet.core.registry import load_registry
from tests.waiting import wait_for

OLD_KEY = "sk-old-0123456789abcdef0123456789"
NEW_KEY = "sk-new-fedcba9876543210fedcba9876"
PLAIN = f"fleet:\n  OPENROUTER_API_KEY: \"{OLD_KEY}\"\nagents: {{}}\nidentities: {{}}\n"
AGE = pytest.mark.skipif(not os.path.exists("/usr/bin/age"),
                         reason="the age tool (Debian package age; scripts/setup --tests)")


def keygen(path: Path) -> str:
    """A new age identity at ``path`` (age-keygen when present, else ours); its recipient."""
    from fleet.control.sealed_edit import init_identity

    return init_identity(path)


def registry_text(recipients: list[str], file: str = "secrets.yaml.age") -> str:
    return (f"fleet:\n  name: sealed\n  secrets:\n    file: {file}\n"
            f"    recipients: [{', '.join(recipients)}]  # who may open it\n"
            "wizards:\n  ezra:\n    host: 192.0.2.10\n    role: orchestrator\n"
            "    model: test/m\n")


class Project:
    """A fleet repository folder: registry, an operator identity, a sealed secrets file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.identity = folder / "home" / "age.txt"
        self.recipient = keygen(self.identity)
        self.registry = folder / "registry.yaml"
        self.registry.write_text(registry_text([self.recipient]))
        self.sealed = folder / "secrets.yaml.age"
        plain = folder / "plain.yaml"
        plain.write_text(PLAIN)
        plain.chmod(0o600)
        self.fleet("secrets", "encrypt", str(plain)).check_returncode()
        plain.unlink()

    def env(self, **extra: str) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "FLEET_AGE_IDENTITY": str(self.identity),
               "FLEET_REGISTRY": str(self.registry), "HOME": str(self.folder / "home"),
               "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"], **extra}
        return env

    def fleet(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from fleet.cli import main; main()",
                               *args], capture_output=True, text=True, env=self.env(**extra),
                              timeout=60, check=False)

    def plaintext(self) -> str:
        done = self.fleet("secrets", "show", "--masked")
        assert done.returncode == 0, done.stderr
        return done.stdout

    def key(self) -> str:
        os.environ["FLEET_AGE_IDENTITY"] = str(self.identity)
        try:
            found = load_secrets(registry=load_registry(self.registry))
        finally:
            del os.environ["FLEET_AGE_IDENTITY"]
        return found.fleet["OPENROUTER_API_KEY"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    return Project(tmp_path)


def editor(folder: Path, body: str) -> str:
    """An editor script (``$EDITOR``) running ``body`` with the file as ``$1``."""
    script = folder / f"editor-{random.getrandbits(32)}.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_sealed_file_holds_no_value_in_clear_and_opens_in_memory(project: Project) -> None:
    data = project.sealed.read_bytes()
    assert data.startswith(b"age-encryption.org/v1\n") and OLD_KEY.encode() not in data
    assert project.key() == OLD_KEY
    shown = project.plaintext()
    assert "OPENROUTER_API_KEY" in shown and OLD_KEY not in shown
    done = project.fleet("secrets", "check")
    assert done.returncode == 0 and "ok: 1 fleet value(s)" in done.stdout


@AGE
def test_the_age_tool_opens_our_file_and_we_open_its_file(project: Project) -> None:
    opened = subprocess.run(["age", "--decrypt", "-i", str(project.identity),
                             str(project.sealed)], capture_output=True, text=True, check=True)
    assert yaml.safe_load(opened.stdout)["fleet"]["OPENROUTER_API_KEY"] == OLD_KEY
    theirs = PLAIN.replace(OLD_KEY, NEW_KEY)
    subprocess.run(["age", "--encrypt", "-r", project.recipient, "-o", str(project.sealed)],
                   input=theirs, text=True, check=True)
    assert project.key() == NEW_KEY
    other = project.folder / "keygen.txt"  # an identity age-keygen made opens ours too
    made = subprocess.run(["age-keygen", "-o", str(other)], capture_output=True, text=True,
                          check=True)
    public = made.stderr.split("Public key: ")[1].strip()
    assert RECIPIENT_RE.fullmatch(public)
    done = project.fleet("secrets", "recipients", "add", public)
    assert done.returncode == 0, done.stderr
    opened = subprocess.run(["age", "--decrypt", "-i", str(other), str(project.sealed)],
                            capture_output=True, text=True, check=True)
    assert NEW_KEY in opened.stdout


def test_edit_seals_the_editors_text_and_leaves_no_plaintext(project: Project) -> None:
    seen = project.folder / "seen-path"
    script = editor(project.folder, f'echo "$1" > {seen}; stat -c %a "$1" >> {seen}; '
                                    f'stat -c %a "$(dirname "$1")" >> {seen}; '
                                    f'sed -i "s/{OLD_KEY}/{NEW_KEY}/" "$1"')
    done = project.fleet("secrets", "edit", EDITOR=script)
    assert done.returncode == 0, done.stderr
    assert project.key() == NEW_KEY
    path, file_mode, dir_mode = seen.read_text().split()
    assert (file_mode, dir_mode) == ("600", "700")
    assert Path(path).parent.parent == memory_dir()  # a memory file system, not a disk
    # the user's own runtime dir before the /dev/shm every user shares
    assert memory_dir() == Path(os.environ["XDG_RUNTIME_DIR"])
    assert not Path(path).parent.exists()  # removed after the edit
    assert NEW_KEY.encode() not in project.sealed.read_bytes()


@pytest.mark.parametrize(("body", "message"), [
    ("exit 3", "the editor exited 3"),
    ('echo "fleet: [broken" > "$1"', "YAML syntax error"),
    ('echo "fleet: {SHORT: x}" > "$1"', "fleet.SHORT: the value is shorter"),
])
def test_an_edit_that_fails_or_does_not_check_changes_nothing(
        project: Project, body: str, message: str) -> None:
    before = project.sealed.read_bytes()
    seen = project.folder / "seen-path"
    done = project.fleet("secrets", "edit",
                         EDITOR=editor(project.folder, f'echo "$1" > {seen}; {body}'))
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") <= 2  # one line and a hint
    assert project.sealed.read_bytes() == before
    assert not Path(seen.read_text().strip()).parent.exists()  # the plaintext's folder: gone


def left_plaintext(secret: str) -> list[Path]:
    """Files under the memory dir's edit folders holding ``secret``."""
    found = []
    for folder in memory_dir().glob(f"{EDIT_PREFIX}*"):
        for file in folder.rglob("*"):
            if file.is_file() and secret in file.read_text(errors="replace"):
                found.append(file)
    return found


def test_an_edit_killed_at_any_step_leaves_the_old_or_the_new_sealed_file(
        project: Project) -> None:
    """SIGKILL while the editor runs (before save) and at random points while the result is
    checked, sealed and renamed: the file opens to the old or the new text, never part of
    one; plaintext only ever in a memory file system, and the next command sweeps it."""
    marker = project.folder / "edited"
    script = editor(project.folder, f'sed -i "s/$OLD/$NEW/" "$1"; touch {marker}; '
                                    'if [ -n "$HANG" ]; then sleep 60; fi')
    rng = random.Random(7)
    outcomes = set()
    for attempt in range(20):
        old, new = project.key(), f"sk-rotated-{attempt:04d}-0123456789abcdef"
        marker.unlink(missing_ok=True)
        hang = "1" if attempt % 4 == 0 else ""  # killed while the editor is still open
        process = subprocess.Popen(
            [sys.executable, "-c", "from fleet.cli import main; main()", "secrets", "edit"],
            env=project.env(EDITOR=script, OLD=old, NEW=new, HANG=hang),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        running = process
        wait_for(lambda: marker.exists() or running.poll() is not None, 30,  # noqa: B023
                 "the editor")
        if not hang:
            time.sleep(rng.uniform(0, 0.25))  # somewhere in check, seal, rename
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        now = project.key()
        assert now in (old, new)
        outcomes.add("new" if now == new else "old")
        assert all(file.parent.parent == memory_dir() for file in left_plaintext(new))
        leftovers = [p for p in project.folder.iterdir() if p.name.startswith(".secrets")]
        for staged in leftovers:  # an interrupted atomic write: ciphertext, never plaintext
            assert new.encode() not in staged.read_bytes()
    assert "old" in outcomes  # the kills fell before the rename at least once
    project.fleet("secrets", "check").check_returncode()  # sweeps the dead edits' folders
    assert left_plaintext("sk-rotated-") == []


def test_every_unopenable_file_is_one_line_naming_the_file_and_nothing_deploys(
        project: Project) -> None:
    stranger = project.folder / "stranger.txt"
    keygen(stranger)
    data = project.sealed.read_bytes()
    cases: list[tuple[str, dict[str, str], str, str]] = [
        ("wrong identity", {"FLEET_AGE_IDENTITY": str(stranger)}, "not sealed to the identity",
         "recipients add"),
        ("no identity", {"FLEET_AGE_IDENTITY": str(project.folder / "none.txt")},
         "age identity file not found", "fleet secrets init"),
    ]
    for name, extra, message, hint in cases:
        done = project.fleet("deploy", "--dry", **extra)
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 2 and message in lines[0] and hint in lines[1], (name, lines)
    files = {
        "tampered": (data[:-20] + bytes(20), "damaged or tampered with", "git checkout"),
        "not age": (b"fleet: {}\n", "not an age file", "fleet secrets encrypt"),
    }
    for name, (content, message, hint) in files.items():
        project.sealed.write_bytes(content)
        done = project.fleet("deploy", "--dry")
        lines = done.stderr.splitlines()
        assert done.returncode == 1 and len(lines) == 2, (name, lines)
        assert str(project.sealed) in lines[0] and message in lines[0], (name, lines)
        assert hint in lines[1], (name, lines)
    project.sealed.write_bytes(data)
    project.identity.chmod(0o644)
    done = project.fleet("secrets", "check")
    assert done.returncode == 1 and "readable by group or others" in done.stderr
    assert "chmod 600" in done.stderr
    project.identity.chmod(0o600)
    registry = project.registry.read_text()
    project.registry.write_text(registry.replace(f"[{project.recipient}]", "[]"))
    done = project.fleet("secrets", "edit", EDITOR=editor(project.folder, "true; echo >> $1"))
    assert done.returncode == 1 and "no recipients to seal the secrets to" in done.stderr
    assert project.sealed.read_bytes() == data


def test_removing_a_recipient_reseals_without_it_and_edits_one_registry_line(
        project: Project) -> None:
    second = project.folder / "second.txt"
    other = keygen(second)
    before = project.registry.read_text().splitlines()
    assert project.fleet("secrets", "recipients", "add", other).returncode == 0
    after = project.registry.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1 and other in changed[0][1] and "# who may open it" in changed[0][1]
    assert project.fleet("secrets", "check", FLEET_AGE_IDENTITY=str(second)).returncode == 0
    done = project.fleet("secrets", "recipients", "remove", project.recipient, "--force")
    assert done.returncode == 0 and "Rotate" in done.stdout
    assert project.fleet("secrets", "check", FLEET_AGE_IDENTITY=str(second)).returncode == 0
    refused = project.fleet("secrets", "check")
    assert refused.returncode == 1 and "not sealed to the identity" in refused.stderr
    last = project.fleet("secrets", "recipients", "remove", other,
                         FLEET_AGE_IDENTITY=str(second))
    assert last.returncode == 1 and "at least one recipient" in last.stderr


@pytest.mark.parametrize(("secrets_yaml", "message"), [
    ("secrets: {file: ../outside.age}", "resolves outside the registry's folder"),
    ("secrets: {file: /etc/shadow}", "is an absolute path"),
    ("secrets: {recipients: []}", "missing `file:`"),
    ("secrets: {file: s.age, recipients: [age1short]}", "is not an age recipient"),
    ("secrets: {file: s.age, recipients: \"age1x\"}", "must be a list"),
    ("secrets: {file: s.age, extra: 1}", "unknown field"),
])
def test_the_registry_refuses_a_bad_secrets_setting(tmp_path: Path, secrets_yaml: str,
                                                   message: str) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(f"fleet:\n  {secrets_yaml}\nwizards:\n  ezra:\n    host: 192.0.2.1\n"
                    "    role: orchestrator\n    model: m\n")
    with pytest.raises(RegistryError, match=r"fleet\.secrets") as caught:
        load_registry(path)
    assert message in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=70))
def test_every_recipient_the_registry_accepts_is_an_age_recipient(value: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "registry.yaml"
        path.write_text(yaml.safe_dump({
            "fleet": {"secrets": {"file": "s.age", "recipients": [value]}},
            "wizards": {"ezra": {"host": "192.0.2.1", "role": "orchestrator", "model": "m"}}}))
        try:
            registry = load_registry(path)
        except RegistryError:
            return
    assert registry.secrets is not None
    (accepted,) = registry.secrets.recipients
    assert RECIPIENT_RE.fullmatch(accepted)
    from pyrage import x25519

    x25519.Recipient.from_str(accepted)  # and age takes it


def test_the_library_raises_typed_errors(project: Project, tmp_path: Path) -> None:
    from fleet.control.sealed import load_identities

    bad = tmp_path / "bad.txt"
    bad.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    bad.chmod(0o600)
    with pytest.raises(SealedError, match=r"bad.txt:1: not an age X25519 identity"):
        load_identities(bad)


def test_the_operator_key_never_enters_the_repository_file(project: Project,
                                                          tmp_path: Path) -> None:
    """``fleet secrets encrypt`` seals the operator's key as its public half only; the local
    plaintext file overlays the sealed one for the operator's CLI; what the receiver opens
    (the sealed file alone) trusts the operator and cannot sign as it; an edit that adds the
    private key is refused; ``check`` finds a local key the sealed file does not match."""
    from bus.keys import OPERATOR, PRIVATE_KEY_ENV, keyring_of, new_private_key

    operator = new_private_key()
    plain = tmp_path / "local.yaml"
    plain.write_text(yaml.safe_dump({"fleet": {"OPENROUTER_API_KEY": OLD_KEY},
                                     "identities": {OPERATOR: {PRIVATE_KEY_ENV: operator}}}))
    plain.chmod(0o600)
    done = project.fleet("secrets", "encrypt", str(plain))
    assert done.returncode == 0, done.stderr
    opened = subprocess.run(  # what the receiver can read: the public half, no private key
        [sys.executable, "-c", "from fleet.control.sealed_edit import *; "
         "from fleet.core.registry import load_registry; "
         f"print(sealed_file(load_registry({str(project.registry)!r})).open())"],
        env=project.env(), capture_output=True, text=True, check=True).stdout
    assert operator not in opened
    receiver_view = yaml.safe_load(opened)["identities"][OPERATOR]
    assert set(receiver_view) == {"FLEET_BUS_PUBLIC_KEYS"}
    os.environ["FLEET_AGE_IDENTITY"] = str(project.identity)
    try:
        registry = load_registry(project.registry)
        alone = load_secrets(registry=registry)
        assert alone.operator_key() is None
        assert keyring_of([(OPERATOR, operator)]).items() <= alone.public_keyring().items()
        os.environ["FLEET_SECRETS"] = str(plain)
        both = load_secrets(registry=registry)
        assert both.operator_key() is not None and both.local == plain
        assert both.fleet["OPENROUTER_API_KEY"] == OLD_KEY
        assert both.public_keyring() == alone.public_keyring()
    finally:
        os.environ.pop("FLEET_AGE_IDENTITY", None)
        os.environ.pop("FLEET_SECRETS", None)
    assert project.fleet("secrets", "check", FLEET_SECRETS=str(plain)).returncode == 0
    before = project.sealed.read_bytes()
    adds = editor(project.folder, f'printf "identities:\\n  operator:\\n    '
                                  f'FLEET_BUS_PRIVATE_KEY: {operator}\\n" > "$1"')
    refused = project.fleet("secrets", "edit", EDITOR=adds)
    assert refused.returncode == 1 and "may not be sealed in the repository" in refused.stderr
    assert project.sealed.read_bytes() == before
    plain.write_text(yaml.safe_dump({"identities": {OPERATOR: {PRIVATE_KEY_ENV:
                                                               new_private_key()}}}))
    stale = project.fleet("secrets", "check", FLEET_SECRETS=str(plain))
    assert stale.returncode == 1 and "is not the public half of the operator key" in stale.stderr


def test_the_deploy_writes_agents_env_from_the_sealed_file(project: Project,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pyinfra inventory.py deploy.py`` plans with (``controller_secrets``): the
    registry's sealed file opened in memory, its values in the agent's env file, masked."""
    from deploys.context import AgentContext, controller_secrets

    monkeypatch.setenv("FLEET_AGE_IDENTITY", str(project.identity))
    controller_secrets.cache_clear()
    try:
        found = controller_secrets(str(project.registry))
    finally:
        controller_secrets.cache_clear()
    assert found.path == project.sealed and found.fleet["OPENROUTER_API_KEY"] == OLD_KEY
    registry = load_registry(project.registry)
    ctx = AgentContext(agent=registry.get("ezra"), registry=registry,
                       soul_source=project.folder / "soul.md", secrets=found)
    assert f'OPENROUTER_API_KEY="{OLD_KEY}"' in ctx.env_file()
    assert OLD_KEY not in ctx.masker(f"key={OLD_KEY}")


def test_keys_rotate_and_retire_work_on_the_sealed_file(project: Project,
                                                        tmp_path: Path) -> None:
    """An agent's key is rotated in the sealed file (re-sealed); the operator's in the local
    file, with the sealed file's public half of it kept in step (what the receiver deploys)."""
    from bus.keys import OPERATOR, PRIVATE_KEY_ENV, keyring_of, new_private_key, split_keyring

    plain = tmp_path / "local.yaml"
    operator = new_private_key()
    plain.write_text(yaml.safe_dump({
        "fleet": {"OPENROUTER_API_KEY": OLD_KEY},
        "agents": {"ezra": {PRIVATE_KEY_ENV: new_private_key()}},
        "identities": {OPERATOR: {PRIVATE_KEY_ENV: operator}}}))
    plain.chmod(0o600)
    assert project.fleet("secrets", "encrypt", str(plain)).returncode == 0
    plain.write_text(yaml.safe_dump({"identities": {OPERATOR: {PRIVATE_KEY_ENV: operator}}}))

    def sealed() -> dict[str, Any]:
        done = subprocess.run(
            ["age", "--decrypt", "-i", str(project.identity), str(project.sealed)]
            if os.path.exists("/usr/bin/age") else [sys.executable, "-c", (
                "from fleet.control.sealed_edit import sealed_file; from fleet.core.registry "
                f"import load_registry; print(sealed_file(load_registry({str(project.registry)!r}"
                ")).open())")], capture_output=True, text=True, check=True, env=project.env())
        data: dict[str, Any] = yaml.safe_load(done.stdout)
        return data

    local_env = {"FLEET_SECRETS": str(plain)}
    done = project.fleet("keys", "rotate", "ezra", **local_env)
    assert done.returncode == 0, done.stderr
    assert len(sealed()["agents"]["ezra"][PRIVATE_KEY_ENV].split(",")) == 2
    assert "ezra" not in plain.read_text()  # an agent's key stays in the sealed file
    done = project.fleet("keys", "rotate", OPERATOR, **local_env)
    assert done.returncode == 0, done.stderr
    keys = yaml.safe_load(plain.read_text())["identities"][OPERATOR][PRIVATE_KEY_ENV]
    assert len(keys.split(",")) == 2
    half = sealed()["identities"][OPERATOR]
    assert set(half) == {"FLEET_BUS_PUBLIC_KEYS"}  # still no private key in the repository
    assert split_keyring(half["FLEET_BUS_PUBLIC_KEYS"]) == keyring_of([(OPERATOR, keys)])
    assert project.fleet("secrets", "check", **local_env).returncode == 0  # in step
    assert project.fleet("keys", "retire", "ezra", **local_env).returncode == 0
    assert project.fleet("keys", "retire", OPERATOR, **local_env).returncode == 0
    assert len(sealed()["agents"]["ezra"][PRIVATE_KEY_ENV].split(",")) == 1
    assert split_keyring(sealed()["identities"][OPERATOR]["FLEET_BUS_PUBLIC_KEYS"]) == \
        keyring_of([(OPERATOR, keys.split(",")[1])])
    refused = project.fleet("keys", "rotate", OPERATOR)  # no local file: nowhere to keep it
    assert refused.returncode == 1 and "never in the sealed repository file" in refused.stderr


def test_a_dead_edits_folder_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    """The sweep goes by pid and start time: a folder of a process that is gone, or of a
    later process that got the same pid, is removed; one of a running edit is not."""
    from fleet.control.sealed_edit import sweep_left_behind
    from fleet.core import liveness

    mine = tmp_path / f"{EDIT_PREFIX}{liveness.process_tag()}-abc"
    pid, _, started = liveness.process_tag().partition(".")
    reused = tmp_path / f"{EDIT_PREFIX}{pid}.{int(started) + 1}-abc"  # same pid, not this one
    gone = tmp_path / f"{EDIT_PREFIX}999999999.1-abc"
    for folder in (mine, reused, gone):
        folder.mkdir()
        (folder / "secrets.yaml").write_text(OLD_KEY)
    assert sorted(sweep_left_behind(tmp_path)) == sorted([reused, gone])
    assert mine.exists() and not reused.exists() and not gone.exists()


def test_an_identity_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """The identity file is read like every file a person names: a FIFO is refused without
    blocking on it (a second stat-then-read copy waited for a writer forever)."""
    from fleet.control.sealed import load_identities

    fifo = tmp_path / "identity.txt"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    with pytest.raises(SealedError, match="is not a regular file"):
        load_identities(fifo)
    assert time.monotonic() - started < 5
