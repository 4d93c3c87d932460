"""``fleet.secrets.file`` names a file of its own: the sealing commands replace it, so it is
never the registry, a soul or another file the registry names, nothing under ``.git``, nothing
but a regular file (or none yet) in an existing folder; every refusal is one line with
file:line. And every seal says whom it sealed to, warning about recipients added since."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.control.sealed import write_sealed
from fleet.core.errors import RegistryError
from fleet.core.registry import load_registry
from tests.secrets.test_sealed import NEW_KEY, OLD_KEY, PLAIN, Project, editor, keygen


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    monkeypatch.delenv("FLEET_SECRETS", raising=False)
    return Project(tmp_path)


AGENTS = {
    "ezra": {"host": "192.0.2.10", "role": "orchestrator", "model": "m"},
    "bez": {"host": "192.0.2.11", "role": "worker", "model": "m", "soul": "souls/odd.age",
            "runtime": {"command": ["/bin/true"], "ship": ["bin/run.age"]}},
}
FLEET = {"known_hosts": "hosts.age", "ssh_key": "keys/id.age"}


def make_folder(folder: Path) -> None:
    """A fleet folder with every kind of thing a sealed file may not be."""
    for name in ("souls/ezra.md", "souls/odd.age", "bin/run.age", "hosts.age", "keys/id.age",
                 ".git/config", "sub/.git/HEAD", "existing.age"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x\n")
    (folder / "sub" / "nested.age").write_text("x\n")
    (folder / "link.age").symlink_to("registry.yaml")
    (folder / "outside.age").symlink_to("/etc/hostname")
    (folder / "dirlink").symlink_to("sub")
    (folder / "gitlink").symlink_to(".git")
    (folder / "folder.age").mkdir()
    os.mkfifo(folder / "fifo.age")


def write_registry(folder: Path, file: object) -> Path:
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"fleet": {**FLEET, "secrets": {
        "file": file, "recipients": ["age1" + "q" * 58]}}, "wizards": AGENTS}))
    return path


REFUSED = {
    "registry.yaml": "does not end in '.age'",
    "souls/ezra.md": "does not end in '.age'",
    "souls": "does not end in '.age'",
    "sub/": "does not end in '.age'",
    "souls/odd.age": "a file the registry names",
    "bin/run.age": "a file the registry names",
    "hosts.age": "a file the registry names",
    "keys/id.age": "a file the registry names",
    "link.age": "is the registry file itself",
    "outside.age": "resolves outside the registry's folder",
    "folder.age": "is not a regular file",
    "fifo.age": "is not a regular file",
    "nosuchdir/x.age": "is in a folder that does not exist",
    ".git/x.age": "is inside .git",
    "gitlink/x.age": "is inside .git",
    "sub/.git/x.age": "is inside .git",
    "sub/../x.age": "holds a '..' part",
}


@pytest.mark.parametrize(("value", "message"), REFUSED.items())
def test_a_secrets_file_the_sealing_commands_would_break_is_refused_in_one_line(
        tmp_path: Path, value: str, message: str) -> None:
    """Finding 6: `registry validate` said ok to `file: registry.yaml` and `encrypt` replaced
    the registry with an age file; folders, missing folders and .git gave tracebacks."""
    make_folder(tmp_path)
    registry = write_registry(tmp_path, value)
    project = Project.__new__(Project)
    project.folder, project.registry = tmp_path, registry
    project.identity = tmp_path / "home" / "age.txt"
    keygen(project.identity)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*")
              if path.is_file() and not path.is_symlink() and path.name != "fifo.age"}
    plain = tmp_path / "plain.yaml"
    plain.write_text(PLAIN)
    plain.chmod(0o600)
    for command in (["registry", "validate"], ["secrets", "encrypt", str(plain)],
                    ["secrets", "check"], ["secrets", "edit"], ["deploy", "--dry"]):
        done = project.fleet(*command, EDITOR="true")
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        first = done.stderr.splitlines()[0]
        assert re.match(rf"Error: {re.escape(str(registry))}:\d+: fleet\.secrets\.file: "
                        rf"{re.escape(repr(value))} ", first), (command, first)
        assert message in first, (command, first)
    after = {path: path.read_bytes() for path in before}
    assert after == before  # nothing replaced


def test_a_file_turned_into_a_folder_after_loading_is_one_line(project: Project) -> None:
    """Checked again where it is used: the folder may change after the registry loaded."""
    from fleet.control.sealed_edit import sealed_file
    from fleet.core.registry import load_registry

    registry = load_registry(project.registry)
    project.sealed.unlink()
    project.sealed.mkdir()
    with pytest.raises(RegistryError, match=r"fleet\.secrets\.file: .* is not a regular file"):
        sealed_file(registry)


SEGMENTS = ["..", ".", ".git", "sub", "souls", "x.age", "registry.yaml", "link.age", "dirlink",
            "gitlink", "nosuchdir", "", "ezra.md", "odd.age", "existing.age", "folder.age",
            "fifo.age", "nested.age", "outside.age", "bin", "run.age", "hosts.age", "keys",
            "id.age", "s.age", ".age", "/", "~"]
VALUES = st.one_of(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map("/".join),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map("/".join).map(
        lambda value: "/" + value),
    st.text(min_size=1, max_size=30),
    st.text(alphabet="ab./-_\\", min_size=1, max_size=12).map(lambda value: value + ".age"),
)


@pytest.fixture(scope="module")
def fleet_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="sealed-path-"))
    make_folder(folder)
    return folder


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_every_accepted_secrets_file_is_a_regular_file_of_its_own(
        fleet_folder: Path, value: str) -> None:
    """Every value the registry accepts is a regular file (or none yet) inside the folder, in
    an existing folder, not under .git, not the registry nor a file it names, and the sealing
    really writes there; every refused one is a single line with file:line."""
    registry_path = write_registry(fleet_folder, value)
    try:
        registry = load_registry(registry_path)
    except RegistryError as exc:
        lines = str(exc).splitlines()
        assert len(lines) == 1, lines
        assert re.match(rf"{re.escape(str(registry_path))}:\d+: fleet\.secrets\.file", lines[0])
        return
    folder = fleet_folder.resolve()
    path = registry.sealed_path()
    assert path is not None and path == fleet_folder / value
    resolved = path.resolve()
    assert resolved.is_relative_to(folder) and resolved != folder
    assert ".git" not in resolved.relative_to(folder).parts
    assert resolved != registry_path.resolve()
    named = {(fleet_folder / item).resolve() for item in registry.referenced_files()}
    assert named >= {(fleet_folder / item).resolve() for item in
                     ("souls/ezra.md", "souls/odd.age", "bin/run.age", "hosts.age",
                      "keys/id.age")}
    assert resolved not in named
    assert path.parent.is_dir() and value.endswith(".age")
    assert not path.is_symlink() and (path.is_file() or not os.path.lexists(path))
    existed = path.exists()
    from pyrage import x25519

    write_sealed(path, "fleet: {}\n", [x25519.Identity.generate().to_public()])
    assert path.is_file() and path.read_bytes().startswith(b"age-encryption.org/v1\n")
    if not existed:
        path.unlink()


def test_seals_name_their_recipients_and_warn_about_ones_added_since(
        project: Project) -> None:
    """Finding 6: a registry change that adds an age1 recipient was sealed to silently."""
    plain = project.folder / "plain.yaml"
    plain.write_text(PLAIN)
    plain.chmod(0o600)
    done = project.fleet("secrets", "encrypt", str(plain))
    assert done.returncode == 0, done.stderr
    assert f"to 1 recipient(s): {project.recipient};" in done.stdout
    assert "Warning" not in done.stderr
    stranger = keygen(project.folder / "stranger.txt")
    text = project.registry.read_text()  # a hostile change to the registry
    project.registry.write_text(text.replace(f"[{project.recipient}]",
                                             f"[{project.recipient}, {stranger}]"))
    script = editor(project.folder, f'sed -i "s/{OLD_KEY}/{NEW_KEY}/" "$1"')
    done = project.fleet("secrets", "edit", EDITOR=script)
    assert done.returncode == 0, done.stderr
    assert f"to 2 recipient(s): {project.recipient}, {stranger};" in done.stdout
    lines = done.stderr.splitlines()
    assert lines[0] == (f"Warning: 1 recipient(s) added since the file was last sealed: "
                        f"{stranger}"), lines
    assert "git log -p" in lines[1]
    again = project.fleet("secrets", "edit", EDITOR=editor(
        project.folder, f'sed -i "s/{NEW_KEY}/{OLD_KEY}/" "$1"'))
    assert again.returncode == 0 and "Warning" not in again.stderr  # recorded now
    plain.write_text(PLAIN)
    third = keygen(project.folder / "third.txt")
    project.registry.write_text(project.registry.read_text().replace(
        f"{stranger}]", f"{stranger}, {third}]"))
    done = project.fleet("secrets", "encrypt", str(plain))
    assert done.returncode == 0 and f"sealed: {third}" in done.stderr, done.stderr
    from pyrage import x25519  # a file sealed without the record (the age tool's, say)

    write_sealed(project.sealed, PLAIN, [x25519.Recipient.from_str(project.recipient)])
    done = project.fleet("secrets", "encrypt", str(plain))
    assert done.returncode == 0, done.stderr
    assert "did not record whom it was sealed to before" in done.stderr
