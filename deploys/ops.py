"""Custom pyinfra operations of the fleet deploy, for what pyinfra's own operations cannot do
as cheaply: the agent account, directories, files (secret ones masked in diffs), releases
(upload, atomic switch, pruning), operator keys and the agent service.

Each decides from the host's one ``NodeState`` snapshot (one fact round trip per host for the
whole deploy) and yields only the commands needed, joined into one shell command where
possible. pyinfra's built-in operations each read their own facts, once when planning and again
when running. Measured on the 3-node lab (a no-change ``pyinfra -y`` run of N copies of one
built-in operation on 3 hosts, N = 0 and 10, 2026-11-30, load 1.8 on 2 cores), the wall time
each operation adds:

====================================  =======  =========================================
built-in                              per op   used instead
====================================  =======  =========================================
``server.user`` (``Users`` fact)      ~570 ms  ``agent_account`` (user and group)
``files.put`` / ``files.template``    ~160 ms  ``managed_file`` (6 files per agent)
``systemd.service`` (running)         ~115 ms  ``unit_running``
``files.directory``                   ~57 ms   ``directories`` (7 per agent, one op)
``server.user_authorized_keys``       (same)   ``authorized_keys_added`` (reads ``Users``)
====================================  =======  =========================================

Together they would add about 2 s to the ~1.7 s no-change deploy of 3 nodes
(``python bench/deploy_bench.py``), so these stay snapshot-based. pyinfra's own operations are
used where they cost nothing on a no-change run: ``systemd.daemon_reload`` and the restart
(``systemd.service(restarted=True)``) are only planned when a file they depend on will change,
and run only if it did (``_if=``); see :mod:`deploys.services`.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from io import StringIO
from typing import Any, Protocol, TypeVar, cast

import click
from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, HiddenValue, OperationError, operation
from pyinfra.facts.files import FileContents

from deploys.facts import NodeSnapshot, PathInfo
from fleet.core.digests import text_sha256
from fleet.core.masking import Masker, mask_env_pair

Node = NodeSnapshot  # the host's one snapshot (deploys.facts.NodeState)


class Outcome(Protocol):
    """What the deploy reads of an operation's result: pyinfra's ``OperationMeta``, by its
    public methods only."""

    @property
    def will_change(self) -> bool: ...

    def is_complete(self) -> bool: ...

    def did_change(self) -> bool: ...

    @property
    def stdout(self) -> str: ...


@dataclass(frozen=True)
class DiffReport:
    """Where a file operation's ``--diff`` goes: every line through ``masker`` (any file may
    hold a secret: a registry ``config:`` value, say), logged, then handed to ``record``
    (``record(dest, masked_lines)``: the run record's diffs)."""

    masker: Masker
    record: Callable[[str, list[str]], None]


UPLOAD_DIR = "/var/lib/fleet/.upload"
"""With ``fleet.become`` (host data ``_sudo``): the login user's own 0700 folder where SFTP
puts a file before sudo copies it in place, so no content (secrets) sits in a shared /tmp."""


def upload_temp(dest: str) -> str:
    """Where pyinfra's SSH connector puts a file for ``dest`` when it uploads through sudo
    (then ``sudo cp`` to ``dest``): in :data:`UPLOAD_DIR`. Without sudo it uploads to ``dest``
    directly and ignores this."""
    return f"{UPLOAD_DIR}/{dest.strip('/').replace('/', '_')}"


def _q(*parts: str) -> str:
    return " ".join(shlex.quote(part) for part in parts)


def _changed(op: Outcome) -> bool:
    """Did (when executing) or would (when planning) ``op`` change something."""
    return op.did_change() if state.is_executing else op.will_change


def diff_lines(old_text: str, new_text: str) -> list[str]:
    """The lines of a unified diff (hunks and changed lines, no file header)."""
    lines = difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), lineterm="", n=2)
    return [line for line in lines if not line.startswith(("---", "+++"))]


def coloured(line: str) -> str:
    """A diff line as ``--diff`` shows it: ``+`` green, ``-`` red."""
    return click.style(line, fg={"+": "green", "-": "red"}.get(line[:1]))


def _show_diff(diffs: DiffReport, dest: str, exists: bool, new_text: str,
               mask: Callable[[str, str], tuple[str, str]] = lambda old, new: (old, new)) -> None:
    """Log a unified diff of ``dest`` when pyinfra runs with ``--diff``, through ``mask`` and
    ``diffs.masker``, and hand it to ``diffs.record``; never while probing."""
    if not state.config.DIFF or state.is_executing or _probing:
        return
    hide = diffs.masker
    old = host.get_fact(FileContents, path=dest) if exists else None
    old_text, new_text = mask("".join(f"{line}\n" for line in old or []), new_text)
    host.log(f"Will {'modify' if exists else 'create'} {dest}", logger.info)
    lines = hide.data(diff_lines(hide(old_text), hide(new_text)))
    for line in lines:
        logger.info("  %s", coloured(line))
    logger.info("")
    diffs.record(dest, lines)


_probing = False  # a probe runs the operations' functions now (:func:`probe`): no output
SNAPSHOT_OPERATIONS: dict[object, Callable[..., Generator[Any, None, Any]]] = {}
"""Each operation deciding from the node's snapshot only, with its undecorated function."""


class Changes(Exception):
    """The probe met an operation that would change the node, or one it cannot decide from the
    snapshot (pyinfra's own operations read facts of their own): the host is planned in full."""


@dataclass(frozen=True)
class Unchanged:
    """The outcome of an operation the probe found would change nothing (:class:`Outcome`)."""

    will_change: bool = False
    stdout: str = ""

    def is_complete(self) -> bool:
        return True

    def did_change(self) -> bool:
        return False


UNCHANGED = Unchanged()

OperationFunction = TypeVar("OperationFunction", bound=Callable[..., Generator[Any, None, Any]])


def snapshot_operation(func: OperationFunction) -> OperationFunction:
    """pyinfra's ``@operation()`` for an operation that decides from the node's one snapshot
    and its arguments alone (no fact of its own): :func:`probe` can then run the same function
    to learn whether it would change anything, planning nothing."""
    decorated = operation()(func)
    SNAPSHOT_OPERATIONS[decorated] = func
    return cast(OperationFunction, decorated)


def probe(op: Callable[..., Any], name: str, arguments: dict[str, Any]) -> Outcome:
    """Whether ``op`` (named ``name``) with ``arguments`` would change the node, decided by
    running its function on the snapshot, silently, without planning it: :data:`UNCHANGED`,
    else :class:`Changes`. An operation that is not a :func:`snapshot_operation`, or one with
    pyinfra's global arguments (``_if=``...), counts as a change: it is then planned for real."""
    function = SNAPSHOT_OPERATIONS.get(op)
    if function is None or any(key.startswith("_") for key in arguments):
        raise Changes(f"{name}: not decided from the node's snapshot")
    global _probing
    _probing = True
    try:
        commands = function(**arguments)
        if next(commands, None) is not None:
            raise Changes(name)
    finally:
        _probing = False
    return UNCHANGED


def _noop(description: str) -> None:
    """pyinfra's ``host.noop``: logged when planning, not while probing."""
    if not _probing:
        host.noop(description)


def _attributes(path: str, have: PathInfo, user: str, group: str,
                mode: str) -> list[str]:
    """Commands that fix owner and mode of an existing ``path`` (none when right)."""
    commands = []
    if (have["user"], have["group"]) != (user, group):
        commands.append(_q("chown", f"{user}:{group}", path))
    if have["mode"] != mode.lstrip("0"):
        commands.append(_q("chmod", mode, path))
    return commands


@snapshot_operation
def agent_account(user: str, home: str, node: Node):
    """
    A system user and group for the agent, with no login shell.

    + user: user and group name
    + home: home directory (not created)
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        agent_account(name="Agent user", user="bezalel", home="/var/lib/fleet/bezalel", node=node)
    """
    commands = []
    if not node["group"]:
        commands.append(_q("groupadd", "--system", user))
    if not node["user"]:
        commands.append(_q("useradd", "--system", "--gid", user, "--home-dir", home,
                           "--no-create-home", "--shell", "/usr/sbin/nologin", user))
    if commands:
        yield " && ".join(commands)
    else:
        _noop(f"user {user} exists")


@snapshot_operation
def directories(specs: Sequence[tuple[str, str, str, str]], node: Node):
    """
    Directories with owner, group and mode, created when missing.

    + specs: ``(path, user, group, mode)`` tuples, parents first
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        directories(name="Fleet dirs", specs=[("/opt/fleet", "root", "root", "755")], node=node)
    """
    commands: list[str] = []
    for path, user, group, mode in specs:
        have = node["paths"].get(path)
        if have is None:
            commands.append(_q("install", "-d", "-o", user, "-g", group, "-m", mode, path))
        elif have["type"] != "directory":
            raise OperationError(f"{path} exists and is a {have['type']}, not a directory")
        else:
            commands.extend(_attributes(path, have, user, group, mode))
    if commands:
        yield " && ".join(commands)
    else:
        _noop("directories are up to date")


@snapshot_operation
def managed_file(dest: str, content: str, user: str, group: str, mode: str, node: Node,
                 diffs: DiffReport, then: Sequence[str] = ()):
    """
    A file with exactly ``content``; written to ``dest.new`` with its final mode, then moved.

    + dest: path on the node
    + content: the wanted text
    + user: owner
    + group: group
    + mode: octal mode
    + node: the host's NodeState snapshot
    + diffs: where ``--diff`` output goes (masked; the run record's diffs)
    + then: shell commands to run after the content changed (e.g. check and reload)

    **Example:**

    .. code:: python

        managed_file(name="Soul", dest="/etc/fleet/a/soul.md", content="# Soul\n", user="root",
                     group="root", mode="444", node=node, diffs=diffs)
    """
    have = node["paths"].get(dest)
    if (yield from _kept_if_same(dest, have, content, user, group, mode)):
        return
    _show_diff(diffs, dest, have is not None, content)
    yield from _upload(dest, StringIO(content), user, group, mode, then)


def _kept_if_same(dest: str, have: PathInfo | None, text: str, user: str, group: str,
                  mode: str) -> Generator[str, None, bool]:
    """When ``dest`` already holds ``text``: yield only owner/mode fixes (a noop if none) and
    return True; otherwise yield nothing and return False."""
    if not have or have["sha256"] != text_sha256(text):
        return False
    commands = list(_attributes(dest, have, user, group, mode))
    if commands:
        yield " && ".join(commands)
    else:
        _noop(f"{dest} is up to date")
    return True


def _upload(dest: str, source: Any, user: str, group: str, mode: str, then: Sequence[str] = (),
            secret: bool = False):
    """Upload to ``dest.new``, set owner and mode, move it in place, run ``then``. A secret
    file is created with its final owner and mode before any content is written."""
    staging = f"{dest}.new"
    fix = [_q("chown", f"{user}:{group}", staging), _q("chmod", mode, staging)]
    if secret:
        yield _q("install", "-m", mode, "-o", user, "-g", group, "/dev/null", staging)
        fix = []
    yield FileUploadCommand(source, staging, remote_temp_filename=upload_temp(staging))
    yield " && ".join([*fix, _q("mv", "-f", staging, dest), *then])


@snapshot_operation
def secret_file(dest: str, content: HiddenValue, public: tuple[str, ...] | None, user: str,
                group: str, node: Node, diffs: DiffReport, mode: str = "600", backup: str = ""):
    """
    An env file holding secrets; ``--diff`` shows it with every secret value masked. With
    ``backup``, the content it replaces is kept there first (same owner and mode).

    + dest: path on the node
    + content: the file content (``NAME=value`` lines), hidden from pyinfra's output
    + public: names whose values may be shown in diffs; ``None``: not an env file, the diff
      shows no content at all (a key, a YAML secrets file)
    + user: owner
    + group: group
    + node: the host's NodeState snapshot
    + diffs: where ``--diff`` output goes (masked; the run record's diffs)
    + mode: octal mode
    + backup: where the replaced content is kept (none kept when empty)

    **Example:**

    .. code:: python

        secret_file(name="Env", dest="/etc/fleet/a/env", content=HiddenValue("K=v\n"),
                    public=("FLEET_AGENT",), user="root", group="root", node=node,
                    diffs=diffs, backup="/etc/fleet/a/env.previous")
    """
    text = content.unmask()
    have = node["paths"].get(dest)
    if (yield from _kept_if_same(dest, have, text, user, group, mode)):
        return
    if public is None:
        _show_diff(diffs, dest, have is not None, text, _hide_all)
    else:
        _show_diff(diffs, dest, have is not None, text,
                   lambda old, new: mask_env_pair(old, new, public))
    if backup and have is not None:  # its final owner and mode before the content
        yield (f"{_q('install', '-m', mode, '-o', user, '-g', group, '/dev/null', backup)} && "
               f"cat {_q(dest)} > {_q(backup)}")
    yield from _upload(dest, StringIO(text), user, group, mode, secret=True)


def _hide_all(old: str, new: str) -> tuple[str, str]:
    """The diff of a secret file that is not an env file: one line saying it changed."""
    return ("(secret content not shown)\n" if old else "",
            f"(secret content not shown{', changed' if old else ''})\n")


@snapshot_operation
def release_unpacked(release_id: str, tarball: str, releases_dir: str, node: Node):
    """
    Upload a release tarball and unpack it to ``releases_dir/<release_id>/`` unless present.

    + release_id: the release id (directory name)
    + tarball: the release tarball on the controller
    + releases_dir: where releases live on the node
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        release_unpacked(name="Upload release", release_id="444a224b3f00",
                         tarball="/var/cache/sovereign-fleet/release/artifacts/x.tar.gz",
                         releases_dir="/opt/fleet/releases", node=node)
    """
    if release_id in node["releases"]:
        _noop(f"release {release_id} is already installed")
        return
    yield from _unpacked(tarball, releases_dir, release_id)


def _unpacked(tarball: str, parent: str, name: str) -> Generator[Any, None, None]:
    """Upload ``tarball``, unpack it into ``parent/.unpack-<name>`` and move that to
    ``parent/<name>`` (replacing what is there)."""
    staging = f"{parent}/.unpack-{name}"
    upload = f"{staging}.tar.gz"
    final = f"{parent}/{name}"
    yield FileUploadCommand(tarball, upload, remote_temp_filename=upload_temp(upload))
    yield (f"rm -rf {_q(staging, final)} && mkdir {_q(staging)} && "
           f"tar -xzf {_q(upload)} -C {_q(staging)} && rm -f {_q(upload)} && "
           f"mv -T {_q(staging, final)}")


@snapshot_operation
def tree_unpacked(dest: str, tarball: str, node: Node):
    """
    Upload a tarball and unpack it as the folder ``dest``, unless that folder is there.

    + dest: the folder on the node (its parent must exist)
    + tarball: the tarball on the controller (its members are the folder's contents)
    + node: the host's NodeState snapshot (holding ``dest`` if it is there)

    **Example:**

    .. code:: python

        tree_unpacked(name="Receiver code", dest="/opt/fleet/releases/444a224b3f00/receiver",
                      tarball="/var/cache/sovereign-fleet/release/artifacts/receiver-x.tar.gz",
                      node=node)
    """
    if (info := node["paths"].get(dest)) is not None and info["type"] == "directory":
        _noop(f"{dest} is unpacked already")
        return
    parent, _, name = dest.rstrip("/").rpartition("/")
    yield from _unpacked(tarball, parent, name)


@snapshot_operation
def deps_seeded(cache: str, trees: Sequence[tuple[str, str]], user: str, node: Node,
                leave_out: Sequence[str] = ()):
    """
    Dependency trees copied into a release build cache on the node, so a build there needs
    no package index: ``<cache>/<key>/`` with ``.complete``, unless already there.

    + cache: the deps cache directory (``<FLEET_CACHE_DIR>/release/deps``)
    + trees: ``(key, source site dir)`` pairs
    + user: owner of the copies
    + node: the host's NodeState snapshot (holding ``<cache>/<key>/.complete``)
    + leave_out: top-level names not copied (the fleet's own packages)

    **Example:**

    .. code:: python

        deps_seeded(name="Seed", cache="/var/lib/fleet/webhook/release/deps",
                    trees=[("0123abcd", "/opt/fleet/releases/444a224b3f00/site")],
                    user="fleet-webhook", node=node, leave_out=["fleet", "bus"])
    """
    missing = [(key, source) for key, source in trees
               if f"{cache}/{key}/.complete" not in node["paths"]]
    if not missing:
        _noop(f"{len(trees)} dependency trees are in {cache}")
        return
    parent = cache.rsplit("/", 1)[0]
    commands = [_q("install", "-d", "-o", user, "-g", user, "-m", "700", parent, cache)]
    for key, source in missing:
        staging, final = f"{cache}/.seed-{key}", f"{cache}/{key}"
        drop = " ".join(_q(f"{staging}/{name}") for name in leave_out)
        commands.append(f"rm -rf {_q(staging, final)} && cp -a {_q(source)}/. {_q(staging)} && "
                        f"rm -rf {drop} && touch {_q(staging + '/.complete')} && "
                        f"chown -R {_q(f'{user}:{user}', staging)} && mv -T {_q(staging, final)}")
    yield " && ".join(commands)


@snapshot_operation
def release_current(release_id: str, nodectl: str, node: Node):
    """
    Point ``/opt/fleet/current`` at a release, atomically (``fleet-nodectl switch``).

    + release_id: the release to make current
    + nodectl: path of fleet-nodectl on the node
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        release_current(name="Switch", release_id="444a224b3f00",
                        nodectl="/opt/fleet/bin/fleet-nodectl", node=node)
    """
    if node["current"] == release_id:
        _noop(f"current already points at {release_id}")
        return
    yield _q(nodectl, "switch", release_id)


@snapshot_operation
def releases_pruned(keep: int, incoming: str, nodectl: str, node: Node):
    """
    Keep only the newest ``keep`` releases on the node.

    + keep: how many releases to keep (the current one included)
    + incoming: the release this run installs (counted even before it is unpacked)
    + nodectl: path of fleet-nodectl on the node
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        releases_pruned(name="Prune", keep=5, incoming="444a224b3f00",
                        nodectl="/opt/fleet/bin/fleet-nodectl", node=node)
    """
    installed = {*node["releases"], incoming}
    if len(installed) <= keep:
        _noop(f"{len(installed)} releases installed (keeping up to {keep})")
        return
    yield _q(nodectl, "prune", "--keep", str(keep))


@snapshot_operation
def authorized_keys_added(keys_file: str, keys: Sequence[str], node: Node):
    """
    Add public keys to an ``authorized_keys`` file; keys already there are left alone.

    + keys_file: the authorized_keys path
    + keys: public key lines to add
    + node: the host's NodeState snapshot

    **Example:**

    .. code:: python

        authorized_keys_added(name="Keys", keys_file="/root/.ssh/authorized_keys",
                              keys=["ssh-ed25519 AAAA... op"], node=node)
    """
    present = {" ".join(line.split()[:2]) for line in node["authorized_keys"]}
    missing = [key.strip() for key in keys if " ".join(key.split()[:2]) not in present]
    if not missing:
        _noop(f"all {len(keys)} operator keys present")
        return
    folder = keys_file.rsplit("/", 1)[0]
    yield (f"install -d -m 700 {_q(folder)} && touch {_q(keys_file)} && chmod 600 {_q(keys_file)}"
           f" && {{ [ -z \"$(tail -c 1 {_q(keys_file)})\" ] || echo >> {_q(keys_file)}; }}")
    # (a last line without a newline is ended first: an added key must not join it)
    for key in missing:
        yield f"echo {_q(key)} >> {_q(keys_file)}"


@snapshot_operation
def agent_service(unit: str, node: Node, unit_file: Outcome, triggers: Sequence[Outcome],
                  restart: str = ""):
    """
    A unit enabled and running; daemon-reload when its file changed, restart (with a command
    of its own) when any of ``triggers`` changed, not when it was just started. Used for the
    webhook receiver, whose restart must wait for its own running deploy
    (:func:`deploys.webhook.restart_command`); the agent's service uses :func:`unit_running`
    and pyinfra's ``systemd`` operations (:mod:`deploys.services`).

    + unit: the unit name
    + node: the host's NodeState snapshot
    + unit_file: the operation writing the unit file
    + triggers: operations whose change needs a restart
    + restart: shell command restarting it (default ``systemctl restart UNIT``)

    **Example:**

    .. code:: python

        agent_service(name="Service", unit="fleet-agent-a.service", node=node, unit_file=op,
                      triggers=[release_op, config_op])
    """
    status = node["unit"]
    commands = ["systemctl daemon-reload"] if _changed(unit_file) else []
    if status.get("enabled") != "enabled":
        commands.append(_q("systemctl", "enable", unit))
    if status.get("active") != "active":
        commands.append(_q("systemctl", "start", unit))
    elif any(_changed(op) for op in [unit_file, *triggers]):
        commands.append(restart or _q("systemctl", "restart", unit))
    if commands:
        yield " && ".join(commands)
    else:
        _noop(f"{unit} is running and nothing it uses changed")


@snapshot_operation
def unit_running(unit: str, node: Node, listed: bool = False):
    """
    A systemd unit enabled and running (started if it is not; never restarted here).

    + unit: the unit name
    + node: the host's NodeState snapshot (its ``unit`` state)
    + listed: the unit is one the snapshot was asked about by name (its ``schedules.timers``:
      timers, the sandbox socket, the runtime), not the agent's unit

    **Example:**

    .. code:: python

        unit_running(name="Agent service enabled and running", unit="fleet-agent-a.service",
                     node=node)
    """
    status = node["schedules"]["timers"].get(unit, {}) if listed else node["unit"]
    commands = []
    if status.get("enabled") != "enabled":
        commands.append(_q("systemctl", "enable", unit))
    if status.get("active") != "active":
        commands.append(_q("systemctl", "start", unit))
    if commands:
        yield " && ".join(commands)
    else:
        _noop(f"{unit} is enabled and running")


@snapshot_operation
def symlink(path: str, target: str, node: Node):
    """
    ``path`` a symbolic link to ``target`` (replaced atomically when it points elsewhere; a
    folder there from an earlier layout is removed first).

    + path: the link on the node
    + target: what it points at
    + node: the host's NodeState snapshot (``path`` among its ``links``)

    **Example:**

    .. code:: python

        symlink(name="Runtime files", path="/etc/fleet/a/ship",
                target="/opt/fleet/current/ship/a", node=node)
    """
    have = node["paths"].get(path)
    if have is not None and have["type"] == "symbolic link" \
            and node.get("links", {}).get(path) == target:
        _noop(f"{path} points at {target}")
        return
    staging = f"{path}.new"
    commands = [_q("rm", "-rf", "--", path)] if have is not None and \
        have["type"] == "directory" else []
    commands += [_q("rm", "-f", "--", staging), _q("ln", "-s", "--", target, staging),
                 _q("mv", "-Tf", "--", staging, path)]
    yield " && ".join(commands)


@snapshot_operation
def timers_running(timers: Sequence[tuple[str, Outcome]], node: Node,
                   what: str = "schedule timers are"):
    """
    Timers (or sockets) enabled and running; a running one whose unit file changed is
    restarted (a timer computes its next elapse from the new ``OnCalendar=``, a socket binds
    anew), from the node's snapshot (its ``schedules.timers``: the units it was asked about).
    Run after the daemon-reload of the changed files.

    + timers: each unit's name and the operation writing its unit file
    + node: the host's NodeState snapshot
    + what: what the units are, for the no-change message ("schedule timers are")

    **Example:**

    .. code:: python

        timers_running(name="Schedule timers enabled and running",
                       timers=[("fleet-schedule-a_nightly.timer", timer_file)], node=node)
    """
    commands = []
    for unit, unit_file in timers:
        status = node["schedules"]["timers"].get(unit, {})
        if status.get("enabled") != "enabled":
            commands.append(_q("systemctl", "enable", unit))
        if status.get("active") != "active":
            commands.append(_q("systemctl", "start", unit))
        elif _changed(unit_file):
            commands.append(_q("systemctl", "restart", unit))
    if commands:
        yield " && ".join(commands)
    else:
        _noop(f"{len(timers)} {what} running and unchanged")
