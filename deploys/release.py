"""Phase 3, release: ship the release built on the controller and switch ``current`` to it.

Also writes the node's registry copy (no secrets, other agents' config left out) and the
agent config file whose sha256 is the config hash. Keeps the newest releases only.
"""

from __future__ import annotations

from pathlib import Path

import fleet.node.nodectl
from deploys.context import KEEP_RELEASES, NODECTL, RELEASES, AgentContext, phase
from deploys.ops import Outcome, managed_file, release_current, release_unpacked, releases_pruned

NODE_HELPER = "Node helper fleet-nodectl"
UNPACKED = "Release unpacked"
SWITCHED = "Current release switched"
PRUNED = f"Only the newest {KEEP_RELEASES} releases kept"


@phase("Release")
def run(ctx: AgentContext) -> list[Outcome]:
    """Upload + unpack the release, switch current, prune, registry copy and config file;
    returns the operations whose change restarts the agent (the switch and the two files)."""
    release = ctx.release
    ctx.plan(managed_file, NODE_HELPER, dest=NODECTL,
             content=Path(fleet.node.nodectl.__file__).read_text(), user="root", group="root",
             mode="755", node=ctx.node, diffs=ctx.diffs())
    ctx.plan(release_unpacked, UNPACKED, release_id=release.id, tarball=str(release.path),
             releases_dir=RELEASES, node=ctx.node)
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
