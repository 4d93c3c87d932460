"""What ``fleet secrets`` does to the sealed secrets file named by the registry
(``fleet.secrets``): seal a plaintext file, edit, check, show masked, change the recipients.

``edit`` is the one place plaintext meets a file: the decrypted text goes to a file of mode
0600 in a private directory (0700) on a memory file system (the user's own
``$XDG_RUNTIME_DIR``, else the shared ``/dev/shm``; never a disk), the editor runs, the result
is checked and sealed over the old file atomically, and the directory is removed, on errors and
signals too; a text that does not check can be edited again in the same place (the caller's
``again``). A directory left by an edit killed with SIGKILL is removed by the next
``fleet secrets`` command (:func:`sweep_edits`).

Every sealed text records on its first line whom it was sealed to
(:func:`~fleet.control.sealed.with_recipients`): a later seal names the recipients added since
(:class:`Sealing`), such as one a hostile registry change slipped in.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import yaml

from bus.keys import OPERATOR
from fleet.control.sealed import (
    RECEIVER_RECIPIENT,
    SealedError,
    identity_path,
    load_identities,
    open_sealed,
    recipient_of,
    recipients,
    recorded_recipients,
    with_recipients,
    write_sealed,
)
from fleet.control.secrets import (
    BUS_KEY,
    BUS_KEYRING,
    MAX_SECRETS_BYTES,
    SECRETS_ENV,
    Secrets,
    is_sealed,
    load_plain,
    operator_key_problem,
    overlay,
    parse_secrets_text,
    secrets_path,
)
from fleet.core import liveness
from fleet.core.atomic import write_atomic
from fleet.core.errors import SecretsError
from fleet.core.files import read_regular
from fleet.core.masking import Masker
from fleet.core.registry import AGE_RECIPIENT_RE, Registry, load_registry

EDIT_PREFIX = "fleet-secrets-edit-"
MEMORY_DIRS = ("/dev/shm",)
EMPTY_SECRETS = "fleet: {}\nagents: {}\nidentities: {}\n"


@dataclass(frozen=True)
class Sealing:
    """What a seal did: the checked secrets, whom they were sealed to, and which of those the
    file was not sealed to before (empty for a new file; None: the old file did not record
    whom it was sealed to, or this identity could not open it)."""

    secrets: Secrets
    path: Path
    recipients: tuple[str, ...]
    added: tuple[str, ...] | None


@dataclass(frozen=True)
class SealedFile:
    """The registry's sealed secrets file: where it is and whom it is sealed to."""

    path: Path
    recipients: tuple[str, ...]

    def open(self) -> str:
        """Its plaintext, decrypted in memory with ``$FLEET_AGE_IDENTITY``."""
        identity = identity_path()
        return open_sealed(self.path, load_identities(identity), identity)

    def seal(self, text: str, old: str | None = None) -> Sealing:
        """Check ``text`` as a secrets file and seal it over the file, its first line
        recording the recipients; ``old`` is the file's current plaintext (opened here when not
        given) to tell which recipients are new. The operator's private bus key is refused:
        every recipient, the webhook receiver among them, can open the file, and none may sign
        as the operator."""
        found = parse_secrets_text(text, self.path)
        if found.identities.get(OPERATOR, {}).get(BUS_KEY):
            raise SealedError(
                f"{self.path}: identities.{OPERATOR}.{BUS_KEY} may not be sealed in the "
                "repository: every recipient (the webhook receiver too) could sign as the "
                "operator",
                hint=f"Keep the operator's key in a local ${SECRETS_ENV} file (0600; it "
                     f"overlays the sealed file); seal the operator as its public half "
                     f"({BUS_KEYRING}): `fleet secrets encrypt` splits a plaintext file so.")
        to = recipients(self.recipients, "registry fleet.secrets.recipients")
        before = self.recorded(old) if os.path.lexists(self.path) else ()
        write_sealed(self.path, with_recipients(text, self.recipients), to)
        added = None if before is None else tuple(value for value in self.recipients
                                                  if value not in before)
        return Sealing(found, self.path, self.recipients, added)

    def recorded(self, old: str | None) -> tuple[str, ...] | None:
        """Whom the file was sealed to, as its plaintext ``old`` (else the file, if this
        identity opens it) records; None when unknown."""
        if old is None:
            try:
                old = self.open()
            except SecretsError:
                return None
        return recorded_recipients(old)


def sealed_file(registry: Registry) -> SealedFile:
    """The registry's ``fleet.secrets`` (:class:`SealedError` when it names none)."""
    if registry.secrets is None:
        raise SealedError(f"{registry.path}: names no sealed secrets file",
                          hint="Add `fleet: {secrets: {file: secrets.yaml.age, recipients: "
                               "[age1...]}}`; `fleet secrets init` prints your recipient.")
    path = registry.sealed_path()
    assert path is not None
    return SealedFile(path, registry.secrets.recipients)


def init_identity(path: Path) -> str:
    """Create an age identity at ``path`` (0600; never over an existing file) and return its
    recipient."""
    from pyrage import x25519

    if path.exists():
        return recipient_of(load_identities(path)[0])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = x25519.Identity.generate()
    public = recipient_of(identity)
    write_atomic(path, f"# public key: {public}\n{identity}\n", mode=0o600)
    return public


RECEIVER_CAPABILITY = "webhook-receiver"


def receiver_recipient(registry: Registry, timeout: float = 15.0) -> str:
    """The public recipient of the webhook receiver's age identity, read over SSH from its node
    (:data:`fleet.control.sealed.RECEIVER_RECIPIENT`, written by its deploy)."""
    from fleet.control.status import ssh_command

    agent = next((agent for agent in registry
                  if RECEIVER_CAPABILITY in agent.capabilities), None)
    if agent is None:
        raise SealedError(f"{registry.path}: no agent has the {RECEIVER_CAPABILITY!r} "
                          "capability: there is no receiver to seal to",
                          hint=f"Give the agent running the receiver `capabilities: "
                               f"[{RECEIVER_CAPABILITY}]` and deploy it.")
    remote = f"cat {RECEIVER_RECIPIENT}"
    if registry.become == "sudo":
        remote = f"sudo -n {remote}"
    try:
        done = subprocess.run([*ssh_command(agent, registry, timeout), remote],
                              capture_output=True, text=True, timeout=timeout + 5,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess([], 255, "", f"no answer in {timeout:g}s")
    found = done.stdout.strip()
    if done.returncode != 0 or not AGE_RECIPIENT_RE.fullmatch(found):
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1] \
            if done.returncode else "not an age recipient"
        raise SealedError(f"{agent.name}: cannot read the receiver's recipient "
                          f"{RECEIVER_RECIPIENT} ({why})",
                          hint="Deploy the receiver first (`fleet deploy`): its deploy makes "
                               "its age identity on the node.")
    return found


def encrypt_plain(registry: Registry, plain: Path) -> Sealing:
    """Seal the plaintext secrets file ``plain`` (checked first: mode 0600, content) as the
    registry's sealed file, the operator's private bus key as its public half only
    (:meth:`Secrets.receiver_copy`): that key stays in ``plain`` (or your own file named by
    ``$FLEET_SECRETS``), never in the repository. ``plain`` is left as it is."""
    found = load_plain(plain)
    text = (found.receiver_copy() if found.identities.get(OPERATOR, {}).get(BUS_KEY)
            else read_regular(plain, "secrets file", MAX_SECRETS_BYTES,
                              error=SecretsError).decode("utf-8"))
    return sealed_file(registry).seal(text)


def check(registry: Registry) -> Secrets:
    """Open and check the registry's sealed file (every problem names its key path), and the
    local file overlaid on it (``$FLEET_SECRETS``): its operator key must be the one whose
    public half the sealed file holds."""
    target = sealed_file(registry)
    sealed = parse_secrets_text(target.open(), target.path)
    local_path = secrets_path(None, None)
    if local_path is None or is_sealed(local_path):
        return sealed
    local = load_plain(local_path)
    problem = operator_key_problem(sealed, local)
    if problem:
        raise SealedError(problem, hint="Seal the current public half: `fleet secrets edit`, "
                                        f"identities.{OPERATOR}.{BUS_KEYRING}.")
    return overlay(sealed, local)


def show_masked(registry: Registry) -> str:
    """The sealed file's YAML with every value masked."""
    target = sealed_file(registry)
    text = target.open()
    secrets = parse_secrets_text(text, target.path)
    data = yaml.safe_load(text) or {}
    masker = Masker(secrets.values())
    return masker(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def memory_dir() -> Path:
    """A directory on a memory file system, for the plaintext while it is edited: the user's
    own runtime directory (only when it is one: :func:`own_runtime_dir`) before the one every
    user shares."""
    for candidate in (own_runtime_dir(), *MEMORY_DIRS):
        if candidate and os.path.isdir(candidate) and _on_tmpfs(candidate):
            return Path(candidate)
    raise SealedError("no memory file system ($XDG_RUNTIME_DIR or /dev/shm on tmpfs) to edit "
                      "the secrets in: they are never written to a disk",
                      hint="Mount a tmpfs at /dev/shm, or set XDG_RUNTIME_DIR to one.")


def own_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR`` when it is what the XDG spec makes it (a real directory, not a
    symlink, owned by this user, mode 0700: no one else can rename what is in it), else "".
    Another user's directory there (a ``su`` that kept the caller's environment) could swap the
    edit's folder for a symlink to a disk while the editor runs."""
    path = os.environ.get("XDG_RUNTIME_DIR") or ""
    try:
        info = os.lstat(path) if path.startswith("/") else None
    except OSError:
        return ""
    if (info is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & 0o077):
        return ""
    return path


def _on_tmpfs(path: str) -> bool:
    """Whether ``path`` lies on a tmpfs (its longest mount point in /proc/mounts)."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            point = parts[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, parts[2]
    return kind == "tmpfs"


def sweep_left_behind(folder: Path) -> list[Path]:
    """Remove the edit directories in ``folder`` of ``fleet secrets edit`` runs that died
    (their process, named in the directory by pid and start time, no longer runs: a later
    process with the same pid is not it); the removed ones. Only real directories of this user
    are touched (``lstat``: a symlink, or anything another user put there, is never followed
    or removed), and an entry gone meanwhile (another sweep) is skipped."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        tag = entry.name.removeprefix(EDIT_PREFIX).partition("-")[0]
        pid, _, started = tag.partition(".")
        if not (entry.name.startswith(EDIT_PREFIX) and pid.isdigit() and started.isdigit()):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if liveness.alive(int(pid), int(started)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed


def sweep_edits() -> list[Path]:
    """:func:`sweep_left_behind` in every memory file system an edit may have used (what
    every ``fleet secrets`` command does first)."""
    folders = dict.fromkeys(candidate for candidate in (own_runtime_dir(), *MEMORY_DIRS)
                            if candidate and os.path.isdir(candidate))
    return [path for folder in folders for path in sweep_left_behind(Path(folder))]


@contextlib.contextmanager
def private_copy(text: str) -> Iterator[Path]:
    """``text`` in a 0600 file in a fresh 0700 directory on a memory file system, removed
    when the block ends, on SIGTERM, SIGHUP and SIGINT too."""
    folder = memory_dir()
    sweep_edits()
    work = Path(tempfile.mkdtemp(prefix=f"{EDIT_PREFIX}{liveness.process_tag()}-",
                                dir=folder))
    handlers = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        for number in (signal.SIGTERM, signal.SIGHUP):
            handlers[number] = signal.signal(number, stop)
        plain = work / "secrets.yaml"
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        yield plain
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for number, handler in handlers.items():
            signal.signal(number, handler)


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else ``vi``, split as a shell would."""
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def edit(registry: Registry, editor: Sequence[str] | None = None,
         again: Callable[[SecretsError], bool] | None = None) -> Sealing | None:
    """Open the sealed file (or start an empty one), let ``editor`` change the plaintext,
    check it and seal it over the old file; None when the text is unchanged. An editor that
    fails leaves the old file as it was; so does a text that does not check, unless
    ``again(problem)`` says to edit it again: the editor reopens the same file, still only on
    the memory file system."""
    target = sealed_file(registry)
    text = target.open() if target.path.exists() else EMPTY_SECRETS
    with private_copy(text) as plain:
        while True:
            command = [*(editor or editor_command()), str(plain)]
            try:
                done = subprocess.run(command, check=False)
            except OSError as exc:
                raise SealedError(f"cannot run the editor {command[0]!r}: {exc.strerror}",
                                  hint="Set $EDITOR to an editor on your PATH.") from None
            if done.returncode != 0:
                raise SealedError(f"the editor exited {done.returncode}: "
                                  f"{target.path} is unchanged")
            edited = plain.read_text(encoding="utf-8")
            if edited == text and target.path.exists():
                return None
            try:
                return target.seal(edited, old=text if target.path.exists() else None)
            except SecretsError as exc:
                if again is None or not again(exc):
                    raise


RECIPIENTS_LINE_RE = re.compile(r"(?P<indent>[ \t]*)recipients:[ \t]*\[(?P<list>[^\]\n]*)\]"
                                r"[ \t]*(?P<comment>#.*)?")


def set_recipients(registry: Registry, wanted: Sequence[str], force: bool = False) -> Registry:
    """Write ``wanted`` as ``fleet.secrets.recipients`` (a one-line flow list in the registry
    file), then seal the secrets file to exactly them; the registry as reloaded. A change that
    leaves none of your own identity's recipients (you could no longer open the file) is
    refused unless ``force``."""
    for value in wanted:
        if not AGE_RECIPIENT_RE.fullmatch(value):
            raise SealedError(f"{value[:80]!r} is not an age recipient (age1 and 58 Bech32 "
                              "characters)", hint="`age-keygen -y FILE` prints one.")
    if not wanted:
        raise SealedError("a sealed secrets file needs at least one recipient",
                          hint="Add the new recipient before you remove the last one.")
    target = sealed_file(registry)
    text = target.open() if target.path.exists() else None
    if text is not None and not force:
        mine = {recipient_of(identity) for identity in load_identities(identity_path())}
        if not mine & set(wanted):
            raise SealedError(f"none of your identity's recipients ({identity_path()}) would "
                              f"be left: you could no longer open {target.path}",
                              hint="Add another recipient of yours first, or pass --force if "
                                   "someone who stays a recipient can add you back.")
    source = registry.path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    matches = [index for index, line in enumerate(lines) if RECIPIENTS_LINE_RE.fullmatch(
        line.rstrip("\n"))]
    if len(matches) != 1:
        raise SealedError(f"{registry.path}: fleet.secrets.recipients is not written as one "
                          "line `recipients: [age1..., ...]`",
                          hint="Write the list on one line in brackets, then run this again.")
    found = RECIPIENTS_LINE_RE.fullmatch(lines[matches[0]].rstrip("\n"))
    assert found is not None
    comment = f"  {found['comment']}" if found["comment"] else ""
    newline = "\n" if lines[matches[0]].endswith("\n") else ""
    lines[matches[0]] = (f"{found['indent']}recipients: [{', '.join(wanted)}]"
                         f"{comment}{newline}")
    if text is not None:  # sealed to the new recipients first: the registry says so next
        SealedFile(target.path, tuple(wanted)).seal(text, old=text)
    write_atomic(registry.path, "".join(lines), mode=registry.path.stat().st_mode & 0o777)
    return load_registry(registry.path)
