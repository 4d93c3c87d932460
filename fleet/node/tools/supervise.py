"""The supervisor of one tool run: ``python3 -I -S supervise.py TIMEOUT MAX_OUTPUT -- ARGV...``.

The gateway starts it for every command or handler call; stdlib only, run by path (``-I -S``:
no site, no environment-driven imports). It becomes a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``, allowed by the gateway unit's ``@system-service`` filter
and needing no privilege), so every process the tool starts stays its descendant even after
``setsid`` or a double fork: orphans are re-parented to it, not to init. It starts ARGV with
its own stdin, reads stdout and stderr as they come, keeping at most MAX_OUTPUT bytes of each
(the rest is read and dropped, so memory stays bounded), and when the tool exits or TIMEOUT
seconds pass it SIGKILLs every descendant, reaping until none is left. It then writes a
:class:`Report` to stdout: exit code (none when stopped), timed out, why ARGV could not run,
the kept output and the full sizes. Every call pays its start-up, so it imports little.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import sys
import time

TYPE_CHECKING = False  # no `typing` import: it runs for every call, and starts fast
if TYPE_CHECKING:
    from types import FrameType

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
CHUNK = 64 * 1024
DRAIN_S = 2.0  # after the kill: read what the dead writers left in the pipes
TICK_S = 0.05  # without pidfd_open: how often the tool's exit is looked for


class Report:
    """What the supervisor tells the gateway (:meth:`encode`; :func:`decode` reads it)."""

    def __init__(self) -> None:
        self.exit: int | None = None
        self.timed_out = False
        self.error = ""
        self.captures = (Capture(0), Capture(0))

    def encode(self) -> bytes:
        """``EXIT|- TIMED_OUT OUT_KEPT ERR_KEPT OUT_SIZE ERR_SIZE ERROR_LEN\n`` then the
        error text (UTF-8), the kept stdout and the kept stderr."""
        out, err = self.captures
        error = self.error.encode()
        head = (f"{'-' if self.exit is None else self.exit} {int(self.timed_out)} "
                f"{len(out.kept)} {len(err.kept)} {out.size} {err.size} {len(error)}\n")
        return head.encode() + error + bytes(out.kept) + bytes(err.kept)


class Decoded:
    """A report as the gateway reads it (output decoded as UTF-8, bad bytes replaced)."""

    def __init__(self, exit: int | None, timed_out: bool, error: str | None, stdout: str,
                 stderr: str, stdout_bytes: int, stderr_bytes: int) -> None:
        self.exit, self.timed_out, self.error = exit, timed_out, error
        self.stdout, self.stderr = stdout, stderr
        self.stdout_bytes, self.stderr_bytes = stdout_bytes, stderr_bytes


def decode(data: bytes) -> Decoded:
    """The report ``data`` carries; ValueError when it is not one."""
    head, newline, rest = data.partition(b"\n")
    fields = head.decode("ascii").split()
    if not newline or len(fields) != 7:
        raise ValueError("not a supervisor report")
    exit_code = None if fields[0] == "-" else int(fields[0])
    out_kept, err_kept, out_size, err_size, error_len = (int(f) for f in fields[2:])
    if len(rest) != error_len + out_kept + err_kept:
        raise ValueError("a supervisor report of the wrong length")
    out_at = error_len + out_kept
    return Decoded(exit_code, fields[1] == "1", rest[:error_len].decode(errors="replace") or None,
                   rest[error_len:out_at].decode(errors="replace"),
                   rest[out_at:].decode(errors="replace"), out_size, err_size)


def prctl(option: int, value: int) -> None:
    """``prctl(option, value)``; OSError when the kernel or the sandbox refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def children() -> list[int]:
    """This process's direct children (``/proc/self/task/*/children``, or a scan of
    ``/proc`` for processes whose parent it is)."""
    me = os.getpid()
    try:
        found: list[int] = []
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children", encoding="ascii") as listing:
                found += [int(pid) for pid in listing.read().split()]
        return found
    except FileNotFoundError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                    if int(stat.read().rpartition(")")[2].split()[1]) == me:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def kill_tree() -> None:
    """SIGKILL every descendant and reap them: as a subreaper, the children of a killed
    process become this one's children, so the loop ends only when none is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nothing may interrupt the clean-up
    while True:
        for pid in children():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


class Capture:
    """One output pipe read into at most ``limit`` bytes (the rest counted, not kept)."""

    def __init__(self, limit: int) -> None:
        self.kept = bytearray()
        self.size = 0
        self.limit = limit

    def add(self, data: bytes) -> None:
        self.size += len(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def text(self) -> str:
        return self.kept.decode(errors="replace")


def spawn(argv: list[str]) -> tuple[int, int, int, int]:
    """Start ``argv`` in a session of its own with pipes for stdin, stdout and stderr:
    ``(pid, stdin, stdout, stderr)`` (this side's ends); OSError when it cannot run."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, stdin_r, 0), (os.POSIX_SPAWN_DUP2, stdout_w, 1),
               (os.POSIX_SPAWN_DUP2, stderr_w, 2)]  # the other ends are close-on-exec
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions, setsid=True)
    except BaseException:
        for fd in (stdin_w, stdout_r, stderr_r):
            os.close(fd)
        raise
    finally:
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
    return pid, stdin_w, stdout_r, stderr_r


def supervise(timeout: float, limit: int, argv: list[str], stdin: bytes) -> Report:
    """Run ``argv`` as described above; the report."""
    report = Report()
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError) as exc:
        report.error = f"cannot contain the tool: prctl(PR_SET_CHILD_SUBREAPER) failed: {exc}"
        return report
    try:
        pid, stdin_fd, stdout_fd, stderr_fd = spawn(argv)
    except OSError as exc:
        report.error = f"cannot run {argv[0]!r}: {exc.strerror or exc}"
        return report
    report.captures = (Capture(limit), Capture(limit))
    captures = {stdout_fd: report.captures[0], stderr_fd: report.captures[1]}
    selector = selectors.DefaultSelector()
    for fd in captures:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    os.set_blocking(stdin_fd, False)
    if pending:
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        os.close(stdin_fd)
    exited_fd: int | None = None
    try:
        exited_fd = os.pidfd_open(pid)
        selector.register(exited_fd, selectors.EVENT_READ)
    except (OSError, AttributeError):
        exited_fd = None
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                report.exit = os.waitstatus_to_exitcode(status)
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                report.timed_out = True
                break
            wait = remaining if exited_fd is not None else min(remaining, TICK_S)
            for key, _ in selector.select(wait):
                if key.fd == exited_fd:
                    selector.unregister(key.fd)
                elif key.fd == stdin_fd:
                    pending = feed(selector, stdin_fd, pending)
                else:
                    read(selector, key.fd, captures)
    finally:
        kill_tree()
    drain(selector, captures)
    return report


def feed(selector: selectors.BaseSelector, fd: int, pending: memoryview) -> memoryview:
    """Write the next chunk of ``pending`` to the tool's stdin (closed once all is written
    or the tool closed it); what is left."""
    try:
        pending = pending[os.write(fd, pending[:CHUNK]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        pending = pending[:0]
    if not pending:
        selector.unregister(fd)
        os.close(fd)
    return pending


def read(selector: selectors.BaseSelector, fd: int, captures: dict[int, Capture]) -> bool:
    """Read one chunk of ``fd`` into its capture; False (and unregistered) at its end."""
    try:
        data = os.read(fd, CHUNK)
    except BlockingIOError:
        return True
    if not data:
        selector.unregister(fd)
        return False
    captures[fd].add(data)
    return True


def drain(selector: selectors.BaseSelector, captures: dict[int, Capture]) -> None:
    """Read what is left in the output pipes (every writer is dead by now)."""
    deadline = time.monotonic() + DRAIN_S
    while any(fd in captures for fd in selector.get_map()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for key, _ in selector.select(remaining):
            if key.fd in captures:
                read(selector, key.fd, captures)
            else:
                selector.unregister(key.fd)


class Stopped(Exception):
    """SIGTERM: the gateway gave up on this run (the tree is killed on the way out)."""


def stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(args: list[str]) -> int:
    """Parse ``TIMEOUT MAX_OUTPUT -- ARGV...``, supervise, write the report to stdout."""
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: supervise.py TIMEOUT MAX_OUTPUT -- ARGV...\n")
        return 2
    signal.signal(signal.SIGTERM, stopped)
    try:  # the gateway died: stop the tool too
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        sys.stderr.write("supervise.py: no parent-death signal\n")
    report = supervise(float(args[0]), int(args[1]), args[3:], sys.stdin.buffer.read())
    sys.stdout.buffer.write(report.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
