"""Custom pyinfra operations of the fleet deploy: node lock, releases and secret files."""

from __future__ import annotations

import hashlib
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import FileUploadCommand, StringCommand, operation
from pyinfra.api.hiddenvalue import HiddenValue
from pyinfra.facts.files import File, FileContents, Link, Sha256File
from pyinfra.operations.util.files import generate_color_diff

from deploys.facts import InstalledReleases
from fleet.masking import mask_env


def _q(*parts: str) -> str:
    return " ".join(shlex.quote(part) for part in parts)


@operation(is_idempotent=False)
def lock_taken(lock_dir: str, owner: str, stale_owner: str = ""):
    """
    Take this node's deploy lock (a directory) for the run, or fail naming who holds it.

    + lock_dir: the lock directory on the node
    + owner: who takes it (``controller:pid:run-id``)
    + stale_owner: a holder found dead at preflight whose lock may be taken over

    **Example:**

    .. code:: python

        lock_taken(name="Take the deploy lock", lock_dir="/run/fleet-deploy.lock",
                   owner="ctl:42:run")
    """
    lock, owner_file = shlex.quote(lock_dir), shlex.quote(f"{lock_dir}/owner")
    holder = f"$(cut -d' ' -f1 {owner_file} 2>/dev/null)"
    takeover = f' || [ "{holder}" = {shlex.quote(stale_owner)} ]' if stale_owner else ""
    yield (
        f"if mkdir {lock} 2>/dev/null || [ \"{holder}\" = {shlex.quote(owner)} ]{takeover}; "
        f"then echo {shlex.quote(owner)} \"$(date +%s)\" > {owner_file}; "
        f"else echo \"node is locked by another deploy: $(cat {owner_file}); remove "
        f"{lock_dir} if that deploy is dead\" >&2; exit 1; fi"
    )


@operation()
def release_unpacked(release_id: str, tarball: str, releases_dir: str):
    """
    Upload a release tarball and unpack it to ``releases_dir/<release_id>/`` unless present.

    + release_id: the release id (directory name)
    + tarball: the release tarball on the controller
    + releases_dir: where releases live on the node

    **Example:**

    .. code:: python

        release_unpacked(name="Upload release", release_id="444a224b3f00",
                         tarball="/var/cache/sovereign-fleet/release/artifacts/x.tar.gz",
                         releases_dir="/opt/fleet/releases")
    """
    if release_id in host.get_fact(InstalledReleases, releases_dir=releases_dir):
        host.noop(f"release {release_id} is already installed")
        return
    staging = f"{releases_dir}/.unpack-{release_id}"
    upload = f"{staging}.tar.gz"
    yield _q("mkdir", "-p", releases_dir)
    yield FileUploadCommand(tarball, upload, remote_temp_filename=upload)
    yield (f"rm -rf {_q(staging)} && mkdir {_q(staging)} && tar -xzf {_q(upload)} -C "
           f"{_q(staging)} && rm -f {_q(upload)} && rm -rf {_q(f'{releases_dir}/{release_id}')}"
           f" && mv -T {_q(staging)} {_q(f'{releases_dir}/{release_id}')}")


@operation()
def release_current(release_id: str, current: str, nodectl: str):
    """
    Point the ``current`` symlink at a release (atomically, via ``fleet-nodectl switch``).

    + release_id: the release to make current
    + current: the symlink path
    + nodectl: path of fleet-nodectl on the node

    **Example:**

    .. code:: python

        release_current(name="Switch current", release_id="444a224b3f00",
                        current="/opt/fleet/current", nodectl="/opt/fleet/bin/fleet-nodectl")
    """
    link = host.get_fact(Link, path=current)
    if link and Path(link["link_target"]).name == release_id:
        host.noop(f"{current} already points at {release_id}")
        return
    yield _q(nodectl, "switch", release_id)


@operation()
def releases_pruned(releases_dir: str, keep: int, incoming: str, nodectl: str):
    """
    Keep only the newest ``keep`` releases on the node.

    + releases_dir: where releases live on the node
    + keep: how many releases to keep (the current one included)
    + incoming: the release this run installs (counted even before it is unpacked)
    + nodectl: path of fleet-nodectl on the node

    **Example:**

    .. code:: python

        releases_pruned(name="Prune", releases_dir="/opt/fleet/releases", keep=5,
                        incoming="444a224b3f00", nodectl="/opt/fleet/bin/fleet-nodectl")
    """
    installed = set(host.get_fact(InstalledReleases, releases_dir=releases_dir)) | {incoming}
    if len(installed) <= keep:
        host.noop(f"{len(installed)} releases installed (keeping up to {keep})")
        return
    yield _q(nodectl, "prune", "--keep", str(keep))


@operation()
def secret_file(dest: str, content: HiddenValue, public: tuple[str, ...], user: str, group: str,
                mode: str = "600"):
    """
    Upload an env file holding secrets; ``--diff`` shows it with every secret value masked.

    The file is created with its final mode before the content is written, then moved in place.

    + dest: path on the node
    + content: the file content (``NAME=value`` lines), hidden from pyinfra's output
    + public: names whose values may be shown in diffs
    + user: owner
    + group: group
    + mode: octal mode

    **Example:**

    .. code:: python

        secret_file(name="Upload env", dest="/etc/fleet/a/env", content=HiddenValue("K=v\\n"),
                    public=("FLEET_AGENT",), user="a", group="a")
    """
    text = content.unmask()
    remote = host.get_fact(File, path=dest)
    same = bool(remote) and host.get_fact(Sha256File, path=dest) == hashlib.sha256(
        text.encode()).hexdigest()
    if same and remote:
        wrong_owner = remote["user"] != user or remote["group"] != group
        if wrong_owner:
            yield _q("chown", f"{user}:{group}", dest)
        if str(remote['mode']) != mode.lstrip("0"):
            yield _q("chmod", mode, dest)
        if not wrong_owner and str(remote['mode']) == mode.lstrip("0"):
            host.noop(f"{dest} is up to date")
        return
    if state.config.DIFF:
        old = host.get_fact(FileContents, path=dest) if remote else None
        old_lines = mask_env("".join(f"{line}\n" for line in old or []), public)
        host.log(f"Will {'modify' if remote else 'create'} {dest} (secret values masked)",
                 logger.info)
        for line in generate_color_diff(old_lines.splitlines(keepends=True),
                                        mask_env(text, public).splitlines(keepends=True)):
            logger.info("  %s", line)
        logger.info("")
    staging = f"{dest}.new"
    yield _q("install", "-m", mode, "-o", user, "-g", group, "/dev/null", staging)
    yield FileUploadCommand(StringIO(text), staging, remote_temp_filename=staging)
    yield StringCommand("mv", "-f", shlex.quote(staging), shlex.quote(dest))
