"""A work item's workspace: the clone of the repository under the agent's state dir
(``work/ITEM_ID``), and the file tools the model is given in it.

Every path the model names is relative to the workspace and checked where it enters
(:func:`path_problem`): printable ASCII of :data:`PATH_RE`, no empty, ``.`` or ``..`` part, no
part starting with ``-``, nothing under ``.git``. Each file is then opened one directory at a
time with ``O_NOFOLLOW`` from the workspace's own descriptor, so a symlink the repository (or
the model) put anywhere on the path is never followed out of the workspace. Reads and writes
are bounded (:data:`MAX_FILE_BYTES`), listings too (:data:`MAX_LISTED`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.core.errors import FleetError

PATH_RE = re.compile(r"[A-Za-z0-9._+@=,-]+(?:/[A-Za-z0-9._+@=,-]+)*")
MAX_PATH = 512
MAX_FILE_BYTES = 256 * 1024
MAX_LISTED = 2000
MAX_DEPTH = 64
HIDDEN_PARTS = frozenset({".git"})
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkspaceError(FleetError):
    """A file tool was refused (a path outside the rules, too big, not a file); the message
    goes back to the model."""


def path_problem(path: Any) -> str:
    """Why ``path`` is not a workspace path a tool may use (empty when it is one)."""
    if not isinstance(path, str):
        return "the path is not a string"
    if len(path) > MAX_PATH:
        return f"the path is longer than {MAX_PATH} characters"
    if not PATH_RE.fullmatch(path):
        return (f"{path[:80]!r} is not a relative path of letters, digits and ._+@=,- "
                "separated by single '/'")
    parts = path.split("/")
    if any(part in (".", "..") for part in parts):
        return f"{path!r} has a '.' or '..' part: name the file from the workspace's top"
    if any(part.startswith("-") for part in parts):
        return f"{path!r} has a part starting with '-'"
    if any(part in HIDDEN_PARTS for part in parts):
        return f"{path!r} is inside .git, which the tools do not touch"
    return ""


def checked_path(path: Any) -> list[str]:
    """``path``'s parts, or :class:`WorkspaceError` saying why it is refused."""
    problem = path_problem(path)
    if problem:
        raise WorkspaceError(problem)
    return str(path).split("/")


@dataclass(frozen=True)
class Workspace:
    """The clone at ``root`` (a directory the agent owns under its state dir); ``written``:
    the paths the model wrote through :meth:`write_file`, the only ones a commit takes (what
    the test command leaves behind, caches and build output, is never proposed)."""

    root: Path
    written: set[str] = field(default_factory=set)

    @contextlib.contextmanager
    def _directory(self, parts: list[str], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory ``parts`` below the root, walked with
        ``O_NOFOLLOW`` (and made, 0755, with ``create``)."""
        fd = os.open(self.root, DIR_FLAGS)
        try:
            for part in parts:
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise WorkspaceError(f"no folder {'/'.join(parts)!r}") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise WorkspaceError(f"{'/'.join(parts)!r} is not a folder of the "
                                             "workspace (a symlink or a file)") from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def read_file(self, path: str) -> str:
        """The text of the regular file ``path`` (UTF-8, undecodable bytes replaced)."""
        *folders, name = checked_path(path)
        with self._directory(folders) as parent:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                             dir_fd=parent)
            except FileNotFoundError:
                raise WorkspaceError(f"no file {path!r}") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise WorkspaceError(f"{path!r} is a symlink; it is not followed") from None
                raise
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise WorkspaceError(f"{path!r} is not a regular file")
                if info.st_nlink > 1:
                    raise WorkspaceError(f"{path!r} has other hard links; it is not read")
                if info.st_size > MAX_FILE_BYTES:
                    raise WorkspaceError(f"{path!r} is {info.st_size} bytes; the tools read at "
                                         f"most {MAX_FILE_BYTES}")
                data = handle.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise WorkspaceError(f"{path!r} is larger than {MAX_FILE_BYTES} bytes")
        return data.decode("utf-8", errors="replace")

    def write_file(self, path: str, text: Any) -> int:
        """Write ``text`` to ``path`` (its folders made as needed), replacing a regular file
        there; the bytes written."""
        if not isinstance(text, str):
            raise WorkspaceError("the content is not a string")
        if len(text) > MAX_FILE_BYTES:
            raise WorkspaceError(f"the content is over {MAX_FILE_BYTES} bytes; the tools write "
                                 "at most that")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise WorkspaceError("the content holds a lone surrogate; send UTF-8 text") from None
        if len(data) > MAX_FILE_BYTES:
            raise WorkspaceError(f"the content is {len(data)} bytes; the tools write at most "
                                 f"{MAX_FILE_BYTES}")
        *folders, name = checked_path(path)
        with self._directory(folders, create=True) as parent:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                             | os.O_NONBLOCK, 0o644, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise WorkspaceError(f"{path!r} is a symlink, a folder or a device; it is "
                                         "not written") from None
                raise
            with os.fdopen(fd, "wb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise WorkspaceError(f"{path!r} is not a regular file")
                if info.st_nlink > 1:  # a file outside the workspace, linked in
                    raise WorkspaceError(f"{path!r} has other hard links; it is not written")
                handle.truncate(0)
                handle.write(data)
        self.written.add(path)
        return len(data)

    def list_files(self, under: str = "") -> list[str]:
        """The files below ``under`` (the whole workspace when empty), sorted, without
        ``.git``; symlinks are listed but never followed. At most :data:`MAX_LISTED` entries
        and :data:`MAX_DEPTH` folders deep (walked without recursion)."""
        parts = checked_path(under) if under else []
        found: list[str] = []
        with self._directory(parts) as top:
            pending: list[tuple[int, str, int]] = [(os.dup(top), "/".join(parts), 0)]
            try:
                while pending:
                    fd, prefix, depth = pending.pop()
                    try:
                        entries = sorted(os.scandir(fd), key=lambda item: item.name)
                        for entry in entries:
                            if entry.name in HIDDEN_PARTS:
                                continue
                            if len(found) + len(pending) >= MAX_LISTED:
                                raise WorkspaceError(f"more than {MAX_LISTED} files; list a "
                                                     "folder instead")
                            name = f"{prefix}/{entry.name}" if prefix else entry.name
                            if entry.is_dir(follow_symlinks=False):
                                if depth + 1 > MAX_DEPTH:
                                    raise WorkspaceError(f"folders nest deeper than {MAX_DEPTH}; "
                                                         "list a deeper folder instead")
                                pending.append((os.open(entry.name, DIR_FLAGS, dir_fd=fd), name,
                                                depth + 1))
                            else:
                                found.append(name)
                    finally:
                        os.close(fd)
            finally:
                for fd, _, _ in pending:
                    os.close(fd)
        return sorted(found)
