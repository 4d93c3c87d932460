"""Phase 3, release: ship the release built on the controller and switch ``current`` to it.

Also writes the node's registry copy (no secrets, other agents' config left out) and the
agent config file whose sha256 is the config hash. Keeps the newest releases only.
"""

from __future__ import annotations

from pathlib import Path

import fleet.nodectl
from deploys.context import KEEP_RELEASES, NODECTL, RELEASES, AgentContext, phase
from deploys.ops import managed_file, release_current, release_unpacked, releases_pruned


@phase("Release")
def run(ctx: AgentContext) -> None:
    """Upload + unpack the release, switch current, prune, registry copy and config file."""
    release = ctx.release
    managed_file(name="Node helper fleet-nodectl", dest=NODECTL,
                 content=Path(fleet.nodectl.__file__).read_text(), user="root", group="root",
                 mode="755", node=ctx.node)
    release_unpacked(name=f"Release {release.id} unpacked", release_id=release.id,
                     tarball=str(release.path), releases_dir=RELEASES, node=ctx.node)
    ctx.restart_triggers.append(release_current(
        name=f"Switch current to {release.id}", release_id=release.id, nodectl=NODECTL,
        node=ctx.node))
    releases_pruned(name=f"Keep the newest {KEEP_RELEASES} releases", keep=KEEP_RELEASES,
                    incoming=release.id, nodectl=NODECTL, node=ctx.node)
    for filename, text in (("registry.yaml", ctx.node_registry()),
                           ("config.json", ctx.config_json())):
        ctx.restart_triggers.append(managed_file(
            name=f"Agent {filename}", dest=f"{ctx.etc_dir}/{filename}", content=text,
            user="root", group=ctx.user, mode="640", node=ctx.node))
