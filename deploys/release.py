"""Phase 3, release: ship the release built on the controller and switch ``current`` to it.

Also writes the node's registry copy (no secrets, other agents' config left out) and the
agent config file whose sha256 is the config hash. Keeps the newest releases only.
"""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import files

import fleet.nodectl
from deploys.context import CURRENT, KEEP_RELEASES, NODECTL, RELEASES, AgentContext
from deploys.ops import release_current, release_unpacked, releases_pruned


@deploy("Release")
def run(ctx: AgentContext) -> None:
    """Upload + unpack the release, switch current, prune, registry copy and config file."""
    release = ctx.release
    files.put(name="Node helper fleet-nodectl", src=fleet.nodectl.__file__, dest=NODECTL,
              user="root", group="root", mode="755")
    release_unpacked(name=f"Release {release.id} unpacked", release_id=release.id,
                     tarball=str(release.path), releases_dir=RELEASES)
    ctx.restart_triggers.append(release_current(
        name=f"Switch current to {release.id}", release_id=release.id, current=CURRENT,
        nodectl=NODECTL))
    releases_pruned(name=f"Keep the newest {KEEP_RELEASES} releases", releases_dir=RELEASES,
                    keep=KEEP_RELEASES, incoming=release.id, nodectl=NODECTL)
    for filename, text in (("registry.yaml", ctx.node_registry()),
                           ("config.json", ctx.config_json())):
        ctx.restart_triggers.append(files.put(
            name=f"Agent {filename}", src=StringIO(text),
            dest=str(Path(ctx.etc_dir) / filename), user="root", group=ctx.user, mode="640"))
