"""The deploy's SSH connections detect a vanished peer (keepalives and a TCP user timeout) and
send each SSH packet at once (no Nagle: a command's round trip does not wait for a delayed
ACK): options on the socket paramiko's transport runs over, set through pyinfra's documented
host data."""

from __future__ import annotations

import socket
from pathlib import Path

import paramiko

from fleet.control.inventory import host_data
from fleet.control.sshsocket import DEAD_AFTER_S, SOCKET_OPTIONS, transport_factory
from fleet.core.registry import load_registry


def test_every_deploy_connection_gets_the_transport_factory(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("wizards:\n  alpha:\n    host: 192.0.2.1\n    role: worker\n"
                    "    model: m\n")
    registry = load_registry(path)
    data = host_data(registry.get("alpha"), registry)
    assert data["ssh_paramiko_connect_kwargs"] == {"transport_factory": transport_factory}


def test_the_socket_gets_keepalives_a_user_timeout_and_no_nagle() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as client:
        transport = transport_factory(client)
        try:
            assert isinstance(transport, paramiko.Transport)
            assert [client.getsockopt(level, option) for level, option, _ in SOCKET_OPTIONS] \
                == [value for _, _, value in SOCKET_OPTIONS]
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == \
                DEAD_AFTER_S * 1000
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            transport.close()


def test_a_proxy_command_pipe_is_left_alone() -> None:
    """A host reached through a ProxyCommand: paramiko hands the factory the command's pipe,
    which has no socket options; the transport runs over it all the same."""
    proxy = paramiko.ProxyCommand("cat")
    with proxy.process:
        assert not hasattr(proxy, "setsockopt")
        transport = transport_factory(proxy)
        assert isinstance(transport, paramiko.Transport) and transport.sock is proxy
        proxy.close()
