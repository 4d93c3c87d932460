"""``fleet secrets edit`` and what it leaves: a killed edit's plaintext is removed by the next
``fleet secrets`` command, whatever it is; nothing another user puts in the memory file system
stops an edit; a text that does not check can be edited again at a terminal; a key repeated in
a secrets file is refused; removing your own last recipient needs ``--force``; a FIFO is
refused, not read."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.control.sealed_edit import EDIT_PREFIX, memory_dir, sweep_left_behind
from fleet.control.secrets import parse_secrets_text
from fleet.core import liveness
from fleet.core.errors import SecretsError
from tests.secrets.test_sealed import NEW_KEY, OLD_KEY, PLAIN, Project, editor, keygen
from tests.waiting import wait_for

NOBODY = 65534


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    return Project(tmp_path)


def killed_edit(project: Project) -> Path:
    """Run ``fleet secrets edit`` with an editor that hangs, SIGKILL it (and the editor) once
    the plaintext is there: the edit folder it leaves behind."""
    seen = project.folder / f"seen-{uuid.uuid4().hex}"
    script = editor(project.folder, f'echo "$1" > {seen}; sleep 300')
    process = subprocess.Popen(
        [sys.executable, "-c", "from fleet.cli import main; main()", "secrets", "edit"],
        env=project.env(EDITOR=script), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_for(lambda: seen.exists() and seen.read_text().strip(), 30, "the editor")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    folder = Path(seen.read_text().strip()).parent
    assert OLD_KEY in (folder / "secrets.yaml").read_text()  # plaintext left behind
    return folder


@pytest.mark.parametrize("command", [
    ["check"], ["show", "--masked"], ["encrypt", "PLAIN"], ["recipients", "list"],
])
def test_every_secrets_command_removes_a_killed_edits_plaintext(
        project: Project, command: list[str]) -> None:
    """Finding 4: the README promises the next `fleet secrets` command, not only the next
    edit."""
    folder = killed_edit(project)
    plain = project.folder / "plain.yaml"
    plain.write_text(PLAIN)
    plain.chmod(0o600)
    try:
        args = [str(plain) if arg == "PLAIN" else arg for arg in command]
        done = project.fleet("secrets", *args)
        assert done.returncode == 0, done.stderr
        assert not folder.exists()
        for line in done.stderr.splitlines():  # (a test beside this one may have swept it)
            assert re.fullmatch(rf"removed {memory_dir()}/{EDIT_PREFIX}\S+: the plaintext of "
                                r"a killed `fleet secrets edit`", line), line
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture
def planted() -> Iterator[list[Path]]:
    """Entries planted in the shared memory dir; always removed again."""
    made: list[Path] = []
    yield made
    for path in made:
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif path.exists():
            subprocess.run(["rm", "-rf", str(path)], check=False)


def test_nothing_another_user_plants_in_the_memory_dir_stops_an_edit(
        project: Project, planted: list[Path]) -> None:
    """Finding 5: a dangling symlink named like a dead edit's folder (another user's, or even
    one's own) is never followed, and a stranger's folder is never removed."""
    folder = memory_dir()
    tag = uuid.uuid4().hex
    stranger_link = folder / f"{EDIT_PREFIX}1.1-{tag}a"
    own_link = folder / f"{EDIT_PREFIX}2.1-{tag}b"
    stranger_dir = folder / f"{EDIT_PREFIX}3.1-{tag}c"
    planted.extend([stranger_link, own_link, stranger_dir])
    stranger_link.symlink_to("/nonexistent")
    own_link.symlink_to(f"/nonexistent-{tag}")
    stranger_dir.mkdir()
    if os.getuid() == 0:
        os.lchown(stranger_link, NOBODY, NOBODY)
        os.chown(stranger_dir, NOBODY, NOBODY)
    script = editor(project.folder, f'sed -i "s/{OLD_KEY}/{NEW_KEY}/" "$1"')
    done = project.fleet("secrets", "edit", EDITOR=script)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert project.key() == NEW_KEY
    assert stranger_link.is_symlink() and own_link.is_symlink()  # not followed, not removed
    if os.getuid() == 0:
        assert stranger_dir.is_dir()  # another user's: never removed


def test_sweeps_racing_each_other_never_fail(tmp_path: Path) -> None:
    """Four sweeps over the same 400 dead edits' folders at once: none fails on a folder
    another one removed first, and every folder is removed."""
    dead = [tmp_path / f"{EDIT_PREFIX}999999999.{index}-x" for index in range(400)]
    for folder in dead:
        folder.mkdir()
        (folder / "secrets.yaml").write_text(OLD_KEY)
    results: list[list[Path]] = []
    errors: list[BaseException] = []

    def sweep() -> None:
        try:
            results.append(sweep_left_behind(tmp_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not any(folder.exists() for folder in dead)
    assert {path for found in results for path in found} == set(dead)


def test_a_live_edits_folder_is_never_swept(tmp_path: Path) -> None:
    mine = tmp_path / f"{EDIT_PREFIX}{liveness.process_tag()}-abc"
    mine.mkdir()
    assert sweep_left_behind(tmp_path) == [] and mine.is_dir()


def run_at_a_terminal(project: Project, script: str, answers: bytes
                      ) -> tuple[int, str, str]:
    """``fleet secrets edit`` with its stdin a terminal (a pty) fed ``answers``."""
    main, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", "from fleet.cli import main; main()", "secrets", "edit"],
            env=project.env(EDITOR=script), stdin=terminal, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        os.write(main, answers)
        out, err = process.communicate(timeout=60)
    finally:
        os.close(main)
        os.close(terminal)
    return process.returncode, out, err


def test_a_text_that_does_not_check_can_be_edited_again_at_a_terminal(
        project: Project) -> None:
    """Finding 11: like `crontab -e` and `visudo`: the same text, in the same private file,
    reopened; the fix sealed."""
    count, seen = project.folder / "count", project.folder / "seen"
    script = editor(project.folder, (
        f'echo x >> {count}; echo "$1" >> {seen}; '
        f'if [ "$(wc -l < {count})" = 1 ]; then '
        f'sed -i "s/{OLD_KEY}/short/" "$1"; '   # too short: does not check
        f'else grep -q "short" "$1" && sed -i "s/short/{NEW_KEY}/" "$1"; fi'))
    code, _, err = run_at_a_terminal(project, script, b"y\n")
    assert code == 0, err
    assert "fleet.OPENROUTER_API_KEY: the value is shorter" in err
    assert "Edit the same text again?" in err
    assert project.key() == NEW_KEY
    first, second = seen.read_text().split()
    assert first == second  # the same private file, reopened
    assert not Path(first).parent.exists()  # and removed at the end


def test_declining_to_edit_again_discards_the_edit(project: Project) -> None:
    before = project.sealed.read_bytes()
    seen = project.folder / "seen"
    script = editor(project.folder, f'echo "$1" > {seen}; sed -i "s/{OLD_KEY}/short/" "$1"')
    code, _, err = run_at_a_terminal(project, script, b"n\n")
    assert code == 1 and "the value is shorter" in err and "Traceback" not in err
    assert project.sealed.read_bytes() == before
    assert not Path(seen.read_text().strip()).parent.exists()


@pytest.mark.parametrize(("text", "line"), [
    (f"fleet:\n  OPENROUTER_API_KEY: \"{OLD_KEY}\"\n  OPENROUTER_API_KEY: \"{NEW_KEY}\"\n", 3),
    (f"fleet:\n  A_KEY: \"{OLD_KEY}\"\nagents: {{}}\nfleet:\n  B_KEY: \"{NEW_KEY}\"\n", 4),
    (f"agents:\n  ezra: {{K: \"{OLD_KEY}\"}}\n  ezra: {{K: \"{NEW_KEY}\"}}\n", 3),
])
def test_a_key_repeated_in_a_secrets_file_is_refused(project: Project, text: str,
                                                     line: int) -> None:
    """Finding 11: YAML would keep the last value silently."""
    with pytest.raises(SecretsError, match=rf"x\.yaml:{line}:\d+: repeated key \(first "
                                           r"defined on line \d+\)") as caught:
        parse_secrets_text(text, Path("x.yaml"))
    assert OLD_KEY not in str(caught.value) and NEW_KEY not in str(caught.value)
    before = project.sealed.read_bytes()
    body = text.replace('"', '\\"').replace("\n", "\\n")
    done = project.fleet("secrets", "edit", EDITOR=editor(project.folder,
                                                          f'printf "{body}" > "$1"'))
    assert done.returncode == 1 and "repeated key" in done.stderr, done.stderr
    assert OLD_KEY not in done.stderr and NEW_KEY not in done.stderr
    assert project.sealed.read_bytes() == before


def test_removing_your_own_last_recipient_needs_force(project: Project) -> None:
    """Finding 11: you could no longer open the file."""
    other = keygen(project.folder / "other.txt")
    assert project.fleet("secrets", "recipients", "add", other).returncode == 0
    before = project.registry.read_text()
    done = project.fleet("secrets", "recipients", "remove", project.recipient)
    assert done.returncode == 1, done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "none of your identity's recipients" in lines[0], lines
    assert "--force" in lines[1]
    assert project.registry.read_text() == before
    forced = project.fleet("secrets", "recipients", "remove", project.recipient, "--force")
    assert forced.returncode == 0, forced.stderr
    assert project.recipient not in project.registry.read_text()


def test_encrypt_refuses_a_fifo_at_once(project: Project) -> None:
    """Finding 11: reading a FIFO would wait for a writer forever."""
    fifo = project.folder / "plain.fifo"
    os.mkfifo(fifo, 0o600)
    done = project.fleet("secrets", "encrypt", str(fifo))  # 60 s timeout: main hangs
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "is not a regular file" in lines[0], lines


@pytest.mark.parametrize("kind", ["open to others", "a symlink", "another user's", "relative"])
def test_a_runtime_dir_that_is_not_the_users_own_is_not_used(
        own_runtime_dir: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Outside attack r35: $XDG_RUNTIME_DIR naming another user's tmpfs folder (a `su` that
    kept the caller's environment) let that user swap the edit's folder for a symlink to a
    disk while the editor ran. Only the user's own 0700 directory is used; else /dev/shm."""
    assert memory_dir() == own_runtime_dir
    target = own_runtime_dir / "candidate"
    target.mkdir(mode=0o700)
    if kind == "open to others":
        target.chmod(0o1777)
    elif kind == "a symlink":
        (own_runtime_dir / "link").symlink_to(target)
        target = own_runtime_dir / "link"
    elif kind == "another user's":
        if os.getuid() != 0:
            pytest.skip("needs root to make a folder of another user")
        os.chown(target, NOBODY, NOBODY)
    else:
        monkeypatch.chdir(own_runtime_dir)
        target = Path("candidate")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(target))
    assert memory_dir() == Path("/dev/shm")
