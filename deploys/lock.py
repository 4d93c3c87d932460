"""The node's deploy lock: one deploy at a time per node.

Not a lock between processes of one machine (those are :class:`bus.locks.FileLock`, e.g. the
webhook receiver's ``deploy.lock``): the lock is a directory on the node (``mkdir`` is atomic)
holding an ``owner`` file with ``controller:PID.STARTTIME:run-id <unix time taken>``
(:func:`fleet.core.liveness.process_tag`: a pid with its start time, never reused). Everything
about it lives here:

- :func:`owner`: who this deploy process is;
- :func:`blocker`: at preflight, from the holder the node snapshot read, why the node cannot be
  deployed now (a live deploy holds it), or a dead holder whose lock may be taken over;
- :func:`lock_taken`: the operation taking it when the deploy runs, before the first change
  (a check: nothing at plan time); a deploy that changes nothing skips it, and verify's (or
  rollback's) command takes it (:func:`take_command` keeps a lock its owner holds);
- :func:`release_command`: the shell command releasing it, if this deploy holds it (run with
  verify, rollback or, failing those, audit; :func:`release_now` by the audit and by the
  rollout gate when it skips a host).
"""

from __future__ import annotations

import shlex
import socket

from pyinfra import host, state
from pyinfra.api import Host, StringCommand, operation

from fleet.control.records import current_run_id
from fleet.core.liveness import Process, process_tag

LOCK_DIR = "/run/fleet-deploy.lock"
OWNER_FILE = f"{LOCK_DIR}/owner"
TTL_S = 1800  # a lock older than this whose holder cannot be checked is stale


def owner() -> str:
    """Who holds a node lock taken by this process: ``controller:PID.STARTTIME:run-id``."""
    return f"{socket.gethostname()}:{process_tag()}:{current_run_id()}"


def stale(owner_line: str, now: float) -> bool:
    """A lock is stale when its process on this controller is gone (or its pid now belongs to
    another process), or it is past the TTL."""
    holder, _, taken = owner_line.partition(" ")
    controller, _, rest = holder.partition(":")
    process = Process.parse(rest.partition(":")[0])
    if controller == socket.gethostname() and process is not None:
        return not process.alive()
    try:
        return now - float(taken) > TTL_S
    except ValueError:
        return True


def blocker(owner_line: str, me: str, now: float) -> tuple[str | None, str]:
    """From the node's ``owner`` line: (why the node is locked, or None; a stale holder that
    may be taken over, or '')."""
    holder = owner_line.split(" ")[0]
    if not owner_line or holder == me:
        return None, ""
    if stale(owner_line, now):
        return None, holder
    return (f"deploy lock {LOCK_DIR} is held by {owner_line}; wait for that deploy or remove "
            f"the lock if it is dead"), ""


def _holder_is(name: str) -> str:
    """Shell test: the lock's owner file names ``name``."""
    return f"[ \"$(cut -d' ' -f1 {shlex.quote(OWNER_FILE)} 2>/dev/null)\" = {shlex.quote(name)} ]"


def take_command(me: str, stale_owner: str = "") -> str:
    """Shell command taking the lock for ``me`` (or taking it over from ``stale_owner``).

    The lock appears with its owner in it: a folder holding ``owner`` is made beside it,
    then renamed onto it (``mv -T``: atomic; it fails on a lock held, whose folder is not
    empty, and replaces an empty one, which a deploy that died between ``mkdir`` and
    writing its owner left: preflight reads such a lock as free)."""
    lock, owner = shlex.quote(LOCK_DIR), shlex.quote(OWNER_FILE)
    line = f"{shlex.quote(me)} \"$(date +%s)\""
    takeover = f" || {_holder_is(stale_owner)}" if stale_owner else ""
    return (
        f"{{ t=$(mktemp -d {lock}.XXXXXX) && echo {line} > \"$t/owner\" || exit 1; "
        f"if mv -T \"$t\" {lock} 2>/dev/null; then :; "
        f"elif rm -rf \"$t\"; {_holder_is(me)}{takeover}; then echo {line} > {owner}; "
        f"else echo \"node is locked by another deploy: $(cat {owner}); "
        f"remove {LOCK_DIR} if that deploy is dead\" >&2; exit 1; fi; }}"
    )


def release_command(me: str) -> str:
    """Shell command removing the lock if ``me`` holds it (always succeeds)."""
    return f"{{ {_holder_is(me)} && rm -rf {shlex.quote(LOCK_DIR)}; true; }}"


def release_now(target: Host) -> None:
    """Release ``target``'s lock now if this deploy holds it (a host the deploy stops: the
    rollout gate skipped it, or the audit of a host whose verify did not release it)."""
    # a direct command gets no host-data global arguments: pass ``_sudo`` on
    target.run_shell_command(StringCommand(release_command(owner())),
                             _sudo=bool(target.data.get("_sudo")))


@operation(is_idempotent=False)
def lock_taken(owner: str, stale_owner: str = ""):
    """
    Take this node's deploy lock for the run, or fail naming who holds it. A check, not a
    change: at plan time (a dry run) it does nothing.

    + owner: who takes it (``controller:pid:run-id``)
    + stale_owner: a holder found dead at preflight whose lock may be taken over

    **Example:**

    .. code:: python

        lock_taken(name="Take the node's deploy lock", owner="ctl:42:run-1")
    """
    if not state.is_executing:
        host.noop("the deploy lock is taken when the deploy runs")
        return
    yield take_command(owner, stale_owner)
