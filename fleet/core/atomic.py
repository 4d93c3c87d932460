"""Atomic, durable file replacement: a reader sees the old file or the new one, never part of
one, and after a crash the new one is there once the call returned.

The way (one place for it): write a temporary file in the same directory (a rename is atomic
only within one file system), give it its mode *before* any content (a secret file is never
readable by others, not even while it is written), write, ``fsync`` the file, rename it over
the target, then ``fsync`` the directory so the rename itself is on disk.

Standard library only, so both the controller and node-side code may use it. ``bus`` imports
nothing from ``fleet`` (it writes no files outside SQLite); ``fleet-nodectl`` is a
stand-alone script on the node (it keeps its own switch of the ``current`` link).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) atomically and durably, with ``mode``
    set before any content is written; the directory must exist."""
    payload = data.encode() if isinstance(data, str) else data
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    fsync_dir(path.parent)


def replace_atomic(staged: Path, path: Path) -> None:
    """Move ``staged``, a file written by someone else (a tarball, a model), over ``path`` in
    the same directory, durably: the file's content first, then the rename."""
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, path)
    fsync_dir(path.parent)


def write_atomic_at(dirfd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """:func:`write_atomic` inside the directory open as ``dirfd`` (a directory another user
    owns: no path is followed again, and nothing is created through a symlink): ``.NAME.new``
    made exclusively with its mode, written, synced, renamed over ``name``, the directory
    synced."""
    staged = f".{name}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged, dir_fd=dirfd)
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dirfd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged, dir_fd=dirfd)
        raise
    os.fsync(dirfd)


def publish_dir(staged: Path, target: Path) -> bool:
    """Move ``staged``, a directory built beside ``target`` (a cache: a rootfs, wheels),
    into place durably: everything written is flushed to disk first (``sync``: the tree may
    hold thousands of files), then the rename and the parent directory. False, and
    ``staged`` left to the caller, when ``target`` appeared meanwhile (another build won)."""
    os.sync()
    try:
        os.rename(staged, target)
    except OSError:
        if not target.is_dir():
            raise
        return False
    fsync_dir(target.parent)
    return True
