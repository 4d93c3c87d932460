"""Live checks of deployed lab nodes (testinfra over ssh://): service, port, files, soul, SSH."""

from __future__ import annotations

import hashlib
import json

import pytest
from testinfra.host import Host

from tests.live.conftest import REPO

pytestmark = [pytest.mark.lab, pytest.mark.slow]
Node = tuple[str, Host]


def test_service_running_and_enabled(node: Node) -> None:
    agent, host = node
    service = host.service(f"fleet-agent-{agent}.service")
    assert service.is_running
    assert service.is_enabled


def test_gateway_port_listening(node: Node) -> None:
    _, host = node
    assert host.socket("tcp://0.0.0.0:8646").is_listening


def test_agent_user_has_no_login_shell(node: Node) -> None:
    agent, host = node
    user = host.user(agent)
    assert user.exists
    assert user.shell == "/usr/sbin/nologin"


@pytest.mark.parametrize(("path", "kind", "owner", "group", "mode"), [
    ("/etc/fleet/{a}", "directory", "root", "{a}", 0o750),
    ("/etc/fleet/{a}/env", "file", "{a}", "{a}", 0o600),
    ("/etc/fleet/{a}/soul.md", "file", "root", "root", 0o444),
    ("/etc/fleet/{a}/config.json", "file", "root", "{a}", 0o640),
    ("/var/lib/fleet/{a}", "directory", "{a}", "{a}", 0o700),
    ("/opt/fleet/current", "symlink", "root", "root", None),
])
def test_owners_and_modes(node: Node, path: str, kind: str, owner: str, group: str,
                          mode: int | None) -> None:
    agent, host = node
    target = host.file(path.format(a=agent))
    assert getattr(target, f"is_{kind}")
    assert (target.user, target.group) == (owner.format(a=agent), group.format(a=agent))
    if mode is not None:
        assert target.mode == mode


def test_soul_matches_the_registry(node: Node) -> None:
    agent, host = node
    expected = hashlib.sha256((REPO / "souls" / f"{agent}.md").read_bytes()).hexdigest()
    assert host.file(f"/etc/fleet/{agent}/soul.md").sha256sum == expected


def test_health_is_ok_from_the_node(node: Node) -> None:
    agent, host = node
    body = json.loads(host.check_output(
        "python3 -c \"import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:8646/health').read().decode())\""))
    assert (body["agent"], body["status"]) == (agent, "ok")
    assert body["release"] == host.file("/opt/fleet/current").linked_to.rsplit("/", 1)[1]


def test_no_password_ssh(node: Node) -> None:
    _, host = node
    settings = host.check_output("sshd -T").lower().splitlines()
    assert "passwordauthentication no" in settings
    assert "kbdinteractiveauthentication no" in settings
