"""Ansible inventory for ``site.yml``, generated from the fleet registry (``fleet.core.registry``).

    python bench/ansible/inventory_gen.py REGISTRY OUT_DIR

Writes ``OUT_DIR/inventory.yml`` (groups ``orchestrator`` and ``worker``, one host per agent,
reached with the registry's SSH settings: user, port, key, pinned host keys, sudo) and, per
agent, ``OUT_DIR/files/<agent>/`` with the files the deploy writes from the registry and the
secrets: ``registry.yaml`` (the node's copy), ``config.json`` and ``env`` (0600). Their text
comes from the same functions our deploy uses (:class:`deploys.context.AgentContext`), and the
release is built with :func:`fleet.control.release.build_release`, so both tools ship the same
bytes. Contents live in files (``copy: src=``), not in variables, so Ansible never templates them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO))  # after $PYTHONPATH: the bench points it at a clean clone

import fleet.node.nodectl  # noqa: E402
from deploys import sandbox  # noqa: E402
from deploys.baseline import SSHD_SETTINGS  # noqa: E402
from deploys.context import (  # noqa: E402
    CURRENT,
    KEEP_RELEASES,
    NODECTL,
    NODECTL_CACHE,
    NODECTL_DIR,
    NODECTL_MODULE,
    OPT,
    RELEASES,
    SSHD_DROPIN,
    AgentContext,
)
from deploys.services import MEMORY_MAX, TASKS_MAX, unit_text  # noqa: E402
from deploys.verify import HEALTH_TIMEOUT_S  # noqa: E402
from fleet.control import render  # noqa: E402
from fleet.control.hosts import ssh_settings  # noqa: E402
from fleet.control.release import Release, build_release  # noqa: E402
from fleet.core.registry import Agent, Registry, load_registry  # noqa: E402


def ssh_vars(registry: Registry, agent: Agent) -> dict[str, Any]:
    """How Ansible reaches ``agent``: with the deploy's SSH settings
    (:func:`fleet.control.hosts.ssh_settings`: strict host keys, the lab key)."""
    settings = ssh_settings(agent, registry)
    data: dict[str, Any] = {
        "ansible_host": settings.host, "ansible_user": settings.user,
        "ansible_port": settings.port, "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": shlex.join(
            arg for option in settings.options() for arg in ("-o", option)),
    }
    if settings.key:
        data["ansible_ssh_private_key_file"] = settings.key
    if registry.become:
        data["ansible_become"] = True
        data["ansible_become_method"] = registry.become
    return data


def agent_vars(ctx: AgentContext, release: Release, files: Path) -> dict[str, Any]:
    """The playbook's variables for one agent (paths, names, expected hashes)."""
    agent = ctx.agent
    return {
        "agent_name": agent.name, "agent_port": agent.gateway_port,
        "agent_unit": ctx.unit, "etc_dir": ctx.etc_dir, "state_dir": ctx.state_dir,
        "sandbox_socket": ctx.sandbox_units[0], "sandbox_service": ctx.sandbox_units[1],
        "login_user": agent.ssh_user, "login_keys_file": ctx.login_keys_file,
        "operator_keys": list(agent.authorized_keys),
        "soul_source": str(ctx.soul_source), "soul_sha256": ctx.soul_sha256(),
        "config_hash": ctx.config_hash(), "files_dir": str(files),
        "release_id": release.id, "release_tarball": str(release.path),
    }


def common_vars() -> dict[str, Any]:
    """Variables shared by every host: the layout our deploy uses."""
    return {
        "opt_dir": OPT, "releases_dir": RELEASES, "current_link": CURRENT,
        "nodectl_path": NODECTL, "nodectl_source": str(Path(fleet.node.nodectl.__file__).resolve()),
        "nodectl_dir": NODECTL_DIR, "nodectl_cache": NODECTL_CACHE,
        "nodectl_module_path": f"{NODECTL_DIR}/{NODECTL_MODULE}.py",
        "nodectl_launcher": render.nodectl_launcher(NODECTL_DIR, NODECTL_MODULE),
        "keep_releases": KEEP_RELEASES, "sshd_dropin": SSHD_DROPIN,
        "sshd_settings": SSHD_SETTINGS, "memory_max": MEMORY_MAX, "tasks_max": TASKS_MAX,
        "health_timeout": HEALTH_TIMEOUT_S,
    }


def write_files(ctx: AgentContext, folder: Path) -> None:
    """The agent's generated files: registry copy, config.json, env (0600) and its unit (our
    renderer's: Ansible's template module would render the template's include differently)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (folder / "agent.service").write_text(unit_text(ctx), encoding="utf-8")
    chosen = sandbox.policy(ctx.registry.work)  # the test sandbox, as deploys/sandbox.py writes it
    (folder / "sandbox.json").write_text(render.config_json(chosen.to_dict()), encoding="utf-8")
    socket_text, service_text = sandbox.unit_texts(ctx, chosen).values()
    (folder / "sandbox.socket").write_text(socket_text, encoding="utf-8")
    (folder / "sandbox@.service").write_text(service_text, encoding="utf-8")
    (folder / "registry.yaml").write_text(ctx.node_registry(), encoding="utf-8")
    (folder / "config.json").write_text(ctx.config_json(), encoding="utf-8")
    env = folder / "env"
    env.touch(mode=0o600)
    env.chmod(0o600)
    env.write_text(ctx.env_file(), encoding="utf-8")


def generate(registry_path: Path, out: Path) -> Path:
    """Write the inventory and the agents' files under ``out``; the inventory's path."""
    registry = load_registry(registry_path)
    release = build_release()
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    groups: dict[str, dict[str, Any]] = {"orchestrator": {"hosts": {}},
                                         "worker": {"hosts": {}}}
    for agent in registry:
        ctx = AgentContext(agent=agent, registry=registry,
                           soul_source=registry.soul_path(agent).resolve())
        files = out / "files" / agent.name
        write_files(ctx, files)
        groups[agent.role]["hosts"][agent.name] = {
            **ssh_vars(registry, agent), **agent_vars(ctx, release, files)}
    inventory = {"all": {"vars": common_vars(), "children": groups}}
    path = out / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(generate(args.registry, args.out))


if __name__ == "__main__":
    main()
