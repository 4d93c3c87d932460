"""Per-lab addressing (index, bridge, /24 subnet) and the host-side network plumbing.

Lab ``index`` N owns bridge ``flbrN`` with the controller at ``10.231.N.1/24``; node ``i``
(0-based) gets ``10.231.N.(10+i)`` in network namespace ``flN-NAME`` through veth ``flNvI``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fleet.core.errors import LabError
from fleet.lab.commands import run
from fleet.lab.paths import lab_lock

SUBNET_PREFIX = "10.231"
MAX_INDEX = 254
FIRST_NODE_HOST = 10
MAX_NODES = 254 - FIRST_NODE_HOST + 1
INDEX_FILE = "index"
LAST_INDEX_FILE = "index.last"
"""The index a lab had before its last ``down``: ``up`` takes it again when it is free, so a
lab comes back on the same addresses (its pinned host keys and registry still hold)."""
SYS_NET = Path("/sys/class/net")


def bridge_name(index: int) -> str:
    """The lab's bridge interface (at most 15 characters)."""
    return f"flbr{index}"


def controller_ip(index: int) -> str:
    """The controller's address on the lab bridge."""
    return f"{SUBNET_PREFIX}.{index}.1"


def node_ip(index: int, position: int) -> str:
    """Address of the node at ``position`` (0-based) in lab ``index``."""
    if not 0 <= position < MAX_NODES:
        raise LabError(f"node number {position + 1} is out of range: a lab holds at most "
                       f"{MAX_NODES} nodes", hint=f"Use -n {MAX_NODES} or fewer.")
    return f"{SUBNET_PREFIX}.{index}.{FIRST_NODE_HOST + position}"


def netns_prefix(index: int) -> str:
    """Prefix of every network namespace of lab ``index``."""
    return f"fl{index}-"


def netns_name(index: int, node: str) -> str:
    """The node's network namespace name."""
    return f"{netns_prefix(index)}{node}"


def veth_prefix(index: int) -> str:
    """Prefix of the host ends of lab ``index``'s veth pairs."""
    return f"fl{index}v"


def veth_name(index: int, position: int) -> str:
    """Host end of the node's veth pair (at most 15 characters)."""
    return f"{veth_prefix(index)}{position}"


def read_index(lab_path: Path, name: str = INDEX_FILE) -> int | None:
    """The index stored in a lab folder (``name``: the one it holds, or
    :data:`LAST_INDEX_FILE`), or None when it has none."""
    try:
        index = int((lab_path / name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return index if 0 <= index <= MAX_INDEX else None


def free_index(used: set[int], link_exists: Callable[[str], bool],
               preferred: int | None = None) -> int:
    """``preferred`` when it is free, else the lowest index neither claimed by a lab nor
    holding a leftover bridge."""
    order = [preferred] if preferred is not None else []
    for index in [*order, *range(MAX_INDEX + 1)]:
        if index not in used and not link_exists(bridge_name(index)):
            return index
    raise LabError(f"all {MAX_INDEX + 1} lab subnets are in use",
                   hint="Stop labs you no longer need with `fleet lab down --lab NAME`.")


def allocate_index(lab_path: Path) -> int:
    """Claim an index for ``lab_path`` (kept if it already has one): the one it had before its
    last ``down`` when that is free, else the lowest index no lab holds or had last (so each
    lab keeps its addresses across down and up), else the lowest no lab holds."""
    root = lab_path.parent
    with lab_lock(root / ".index.lock"):
        existing = read_index(lab_path)
        if existing is not None:
            return existing
        folders = [folder for folder in root.iterdir() if folder.is_dir()]
        used = {i for folder in folders if (i := read_index(folder)) is not None}
        kept = {i for folder in folders if folder != lab_path
                and (i := read_index(folder, LAST_INDEX_FILE)) is not None}  # others' last
        preferred = read_index(lab_path, LAST_INDEX_FILE)
        try:
            index = free_index(used | kept, link_exists, preferred)
        except LabError:  # every index is in use or kept for another lab: take a kept one
            index = free_index(used, link_exists, preferred)
        lab_path.mkdir(parents=True, exist_ok=True)
        (lab_path / INDEX_FILE).write_text(f"{index}\n")
        return index


def link_exists(name: str) -> bool:
    """Whether a network interface ``name`` exists on the host."""
    return (SYS_NET / name).exists()


def create_bridge(index: int) -> None:
    """Create the lab bridge with the controller address (replacing a leftover one)."""
    bridge = bridge_name(index)
    if link_exists(bridge):
        run(["ip", "link", "del", bridge])
    run(["ip", "link", "add", bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{controller_ip(index)}/24", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])


def create_node_network(index: int, position: int, node: str) -> str:
    """Namespace + veth for one node, ``eth0`` addressed inside; returns the namespace."""
    netns = netns_name(index, node)
    veth = veth_name(index, position)
    run(["ip", "netns", "add", netns])
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "link", "set", veth, "master", bridge_name(index), "up"])
    run(["ip", "-n", netns, "addr", "add", f"{node_ip(index, position)}/24", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    return netns


def lab_netns(index: int) -> list[str]:
    """Network namespaces of lab ``index`` that exist now."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return [name for name in names if name.startswith(netns_prefix(index))]


def lab_links(index: int) -> list[str]:
    """Host interfaces of lab ``index`` (veth ends and the bridge) that exist now."""
    if not SYS_NET.is_dir():
        return []
    names = sorted(p.name for p in SYS_NET.iterdir())
    return [n for n in names if n.startswith(veth_prefix(index)) or n == bridge_name(index)]


def remove_network(index: int) -> None:
    """Delete the lab's namespaces, leftover veths and finally its bridge."""
    for netns in lab_netns(index):
        run(["ip", "netns", "del", netns], check=False)
    links = lab_links(index)
    for link in sorted(links, key=lambda name: name == bridge_name(index)):
        run(["ip", "link", "del", link], check=False)
