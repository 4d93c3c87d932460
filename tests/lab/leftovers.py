"""What a lab leaves on the host, looked up independently of the lab code."""

from __future__ import annotations

import subprocess
from pathlib import Path


def lab_leftovers(lab_path: Path, index: int) -> list[str]:
    """Namespaces, overlay mounts, bridge/veths, nspawn processes and cgroups of a lab."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    found += [f"netns {line}" for line in netns if line.startswith(f"fl{index}-")]
    for line in Path("/proc/mounts").read_text().splitlines():
        if str(lab_path) in line:
            found.append(f"mount {line}")
    links = [p.name for p in Path("/sys/class/net").iterdir()]
    found += [f"link {name}" for name in links
              if name == f"flbr{index}" or name.startswith(f"fl{index}v")]
    ps = subprocess.run(["ps", "-eo", "stat=,pid=,args="], capture_output=True, text=True,
                        check=True).stdout
    for line in ps.splitlines():
        stat, _, args = line.strip().partition(" ")
        if "systemd-nspawn" in args and str(lab_path) in args and not stat.startswith("Z"):
            found.append(f"process {line.strip()}")
    for tree in ("systemd", "unified"):
        cgroup = Path("/sys/fs/cgroup", tree, "sovereign-fleet", lab_path.name)
        if cgroup.exists():
            found.append(f"cgroup {cgroup}")
    return found
