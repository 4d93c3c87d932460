"""Live checks of a deployed agent's node (testinfra over ssh://): service, port, files, soul,
health, SSH. Run by the project's tests on the lab, and by ``fleet test`` on any fleet."""

from __future__ import annotations

import json

import pytest

from fleet.control.expected import expected
from tests.live.conftest import Node

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_service_running_and_enabled(node: Node) -> None:
    service = node.host.service(f"fleet-agent-{node.agent.name}.service")
    assert service.is_running
    assert service.is_enabled


def test_gateway_port_listening(node: Node) -> None:
    assert node.host.socket(f"tcp://0.0.0.0:{node.agent.gateway_port}").is_listening


def test_agent_user_has_no_login_shell(node: Node) -> None:
    user = node.host.user(node.agent.name)
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"


@pytest.mark.parametrize(("path", "kind", "owner", "group", "mode"), [
    ("/etc/fleet/{a}", "directory", "root", "{a}", 0o750),
    ("/etc/fleet/{a}/env", "file", "root", "root", 0o600),  # systemd reads it as root
    ("/etc/fleet/{a}/soul.md", "file", "root", "root", 0o444),
    ("/etc/fleet/{a}/config.json", "file", "root", "{a}", 0o640),
    ("/var/lib/fleet/{a}", "directory", "{a}", "{a}", 0o700),
    ("/opt/fleet/current", "symlink", "root", "root", None),
])
def test_owners_and_modes(node: Node, path: str, kind: str, owner: str, group: str,
                          mode: int | None) -> None:
    agent = node.agent.name
    target = node.host.file(path.format(a=agent))
    assert getattr(target, f"is_{kind}")
    assert (target.user, target.group) == (owner.format(a=agent), group.format(a=agent))
    if mode is not None:
        assert target.mode == mode


def test_soul_and_config_match_the_registry(node: Node) -> None:
    wanted = expected(node.registry, node.agent)
    etc = f"/etc/fleet/{node.agent.name}"
    assert node.host.file(f"{etc}/soul.md").sha256sum == wanted.soul_sha256
    assert node.host.file(f"{etc}/config.json").sha256sum == wanted.config_hash


def test_health_is_ok_from_the_node(node: Node) -> None:
    port = node.agent.gateway_port
    body = json.loads(node.host.check_output(
        "python3 -c \"import urllib.request as u; "
        f"print(u.urlopen('http://127.0.0.1:{port}/health').read().decode())\""))
    assert (body["agent"], body["status"]) == (node.agent.name, "ok")
    assert body["release"] == node.host.file("/opt/fleet/current").linked_to.rsplit("/", 1)[1]


def test_no_password_ssh(node: Node) -> None:
    settings = node.host.check_output("sshd -T").lower().splitlines()
    assert "passwordauthentication no" in settings
    assert "kbdinteractiveauthentication no" in settings
