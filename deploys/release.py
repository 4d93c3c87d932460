"""Phase 3, release: ship the release built on the controller and switch ``current`` to it.

With ``fleet.prestage`` a later rollout stage's hosts get the release shipped (uploaded and
unpacked, nothing switched) before their rollout gate instead (:func:`prestage`).

Also writes the node's registry copy (no secrets, other agents' config left out) and the
agent config file whose sha256 is the config hash. Keeps the newest releases only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import fleet.node.nodectl
from deploys.baseline import release_folders
from deploys.context import (
    KEEP_RELEASES,
    NODECTL,
    NODECTL_DIR,
    NODECTL_MODULE,
    RELEASES,
    AgentContext,
    phase,
)
from deploys.ops import (
    Outcome,
    directories,
    managed_file,
    release_current,
    release_unpacked,
    releases_pruned,
)
from deploys.preflight import Preflight
from fleet.control.render import nodectl_launcher

NODE_HELPER = "Node helper fleet-nodectl"
NODE_HELPER_MODULE = "Node helper module (fleet-nodectl runs it)"
UNPACKED = "Release unpacked"
FOLDERS = "Release folders (owners and modes as baseline sets them)"
SWITCHED = "Current release switched"
PRUNED = f"Only the newest {KEEP_RELEASES} releases kept"


@functools.cache
def nodectl_source() -> str:
    """The node helper's source (:mod:`fleet.node.nodectl`), read once per process."""
    return Path(fleet.node.nodectl.__file__).read_text()


def unpack(ctx: AgentContext) -> Outcome:
    """Plan the release's upload and unpacking into its own folder under ``RELEASES``."""
    return ctx.plan(release_unpacked, UNPACKED, release_id=ctx.release.id,
                    tarball=str(ctx.release.path), releases_dir=RELEASES, node=ctx.node)


@phase("Pre-stage")
def prestage(ctx: AgentContext, ready: Preflight) -> None:
    """With ``fleet.prestage``, on a later rollout stage's host that passed preflight and lacks
    the release: upload and unpack it now, before the rollout gate, while the earlier stages
    deploy. Only into its own folder (``RELEASES/<id>``, through ``.unpack-<id>``): ``current``,
    the agent's files and units stay as they are until the gate lets the host on. On a node
    baseline has not set up yet, the folders the upload needs are made first, with baseline's
    owners and modes (:func:`deploys.baseline.release_folders`). Preflight took the node's
    deploy lock just before (when the host changes, as it does here). A release unpacked here
    whose rollout then stops stays unused; ``fleet-nodectl prune`` removes it first (it was
    never current) and never the current one."""
    if not ready.ok or not ctx.prestages():
        return
    ctx.plan(directories, FOLDERS, node=ctx.node, specs=release_folders(ctx))
    unpack(ctx)


@phase("Release")
def run(ctx: AgentContext) -> list[Outcome]:
    """Upload + unpack the release, switch current, prune, registry copy and config file;
    returns the operations whose change restarts the agent (the switch and the two files)."""
    release = ctx.release
    ctx.plan(managed_file, NODE_HELPER_MODULE, dest=f"{NODECTL_DIR}/{NODECTL_MODULE}.py",
             content=nodectl_source(), user="root", group="root", mode="644", node=ctx.node,
             diffs=ctx.diffs())  # first: the launcher below runs it
    ctx.plan(managed_file, NODE_HELPER, dest=NODECTL,
             content=nodectl_launcher(NODECTL_DIR, NODECTL_MODULE), user="root",
             group="root", mode="755", node=ctx.node, diffs=ctx.diffs())
    if not ctx.prestages():  # else unpacked before the rollout gate (:func:`prestage`)
        unpack(ctx)
    restart_on: list[Outcome] = [ctx.plan(release_current, SWITCHED, release_id=release.id,
                                          nodectl=NODECTL, node=ctx.node)]
    ctx.plan(releases_pruned, PRUNED, keep=KEEP_RELEASES, incoming=release.id, nodectl=NODECTL,
             node=ctx.node)
    for filename, text in (("registry.yaml", ctx.node_registry()),
                           ("config.json", ctx.config_json())):
        name = f"Agent {filename}"
        restart_on.append(ctx.plan(managed_file, name, dest=f"{ctx.etc_dir}/{filename}",
                                   content=text, user="root", group=ctx.user, mode="640",
                                   node=ctx.node, diffs=ctx.diffs()))
    return restart_on
