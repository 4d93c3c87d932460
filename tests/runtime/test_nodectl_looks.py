"""What ``fleet-nodectl`` reads on the node for verify and the audit facts, as cheaply as every
deploy of every host needs it: the listening TCP ports (``sock_diag`` over netlink, the same
ports /proc/net/tcp{,6} lists, which stays the fallback), a command's output without
``subprocess``, and a parser built for the one command run that reads its arguments as the
whole parser does. A verify run imports neither ``subprocess`` nor the
``idna`` codec (a host name's lookup)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.node import nodectl

REPO = Path(__file__).resolve().parents[2]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def sockets() -> Iterator[dict[str, int]]:
    """Listening sockets on IPv4 and (when the machine has it) IPv6 loopback, a socket bound
    but not listening, and a connected client and its accepted peer: their ports by role."""
    opened: list[socket.socket] = []

    def new(family: socket.AddressFamily, host: str, listen: bool) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        opened.append(sock)
        sock.bind((host, 0))
        if listen:
            sock.listen()
        return sock

    try:
        ports = {"v4": new(socket.AF_INET, "127.0.0.1", True).getsockname()[1],
                 "bound": new(socket.AF_INET, "127.0.0.1", False).getsockname()[1]}
        if ipv6_loopback():
            ports["v6"] = new(socket.AF_INET6, "::1", True).getsockname()[1]
        client = socket.create_connection(("127.0.0.1", ports["v4"]))
        opened.append(client)
        ports["client"] = client.getsockname()[1]
        yield ports
    finally:
        for sock in opened:
            sock.close()


def test_the_netlink_dump_lists_exactly_the_listening_ports_proc_lists(
        sockets: dict[str, int]) -> None:
    by_diag, by_proc = nodectl.diag_listening_ports(), nodectl.proc_listening_ports()
    listening = {sockets["v4"], *([sockets["v6"]] if "v6" in sockets else [])}
    assert listening <= by_diag and listening <= by_proc
    assert sockets["bound"] not in by_diag | by_proc
    assert sockets["client"] not in by_diag | by_proc
    assert nodectl.listening_ports() == sorted(nodectl.listening_ports())
    assert listening <= set(nodectl.listening_ports())


def test_without_sock_diag_the_ports_come_from_proc(sockets: dict[str, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> set[int]:
        raise OSError(93, "Protocol not supported")

    monkeypatch.setattr(nodectl, "diag_listening_ports", refused)
    assert sockets["v4"] in nodectl.listening_ports()


def message(kind: int, seq: int, payload: bytes) -> bytes:
    """One netlink message (header, payload, padded to 4 bytes)."""
    raw = struct.pack("=IHHII", 16 + len(payload), kind, 2, seq, 0) + payload
    return raw + bytes(-len(raw) % 4)


def diag_msg(state: int, port: int) -> bytes:
    """A ``struct inet_diag_msg`` (72 bytes) of a socket in ``state`` on ``port``."""
    return bytes([socket.AF_INET, state, 0, 0]) + struct.pack(">H", port) + bytes(66)


@given(st.lists(st.tuples(st.integers(1, 11), st.integers(0, 65535)), max_size=40),
       st.integers(1, 2**32 - 1), st.booleans())
def test_a_dump_yields_the_ports_of_listening_sockets_only(
        found: list[tuple[int, int]], seq: int, done: bool) -> None:
    data = b"".join(message(nodectl.SOCK_DIAG_BY_FAMILY, seq, diag_msg(state, port))
                    for state, port in found)
    data += message(3, seq, struct.pack("=i", 0)) if done else b""
    ports: set[int] = set()
    assert nodectl.read_diag_answer(data, seq, ports) is done
    assert ports == {port for state, port in found if state == nodectl.TCP_LISTEN}


def test_a_netlink_error_raises_oserror() -> None:
    with pytest.raises(OSError, match="error 22"):
        nodectl.read_diag_answer(message(2, 7, struct.pack("=i", -22) + bytes(16)), 7, set())


@settings(max_examples=300)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1))
def test_any_datagram_is_read_or_refused_with_oserror(data: bytes, seq: int) -> None:
    ports: set[int] = set()
    try:
        ended = nodectl.read_diag_answer(data, seq, ports)
    except OSError:
        return
    assert isinstance(ended, bool)
    assert all(0 <= port <= 65535 for port in ports)


def test_output_of_is_the_commands_stdout_with_nothing_on_stdin() -> None:
    assert nodectl.output_of([sys.executable, "-c", "import sys; print('out'); "
                              "print('err', file=sys.stderr); print(repr(sys.stdin.read()))"]
                             ) == "out\n''\n"
    assert nodectl.output_of(["/nonexistent/systemctl", "show"]) == ""


VERIFY = ["verify", "--unit", "fleet-agent-a.service", "--port", "8646", "--timeout", "20",
          "--release", "0123456789ab", "--config-hash", "c" * 64, "--soul-sha", "d" * 64,
          "--agent", "a", "--login-user", "root"]
ARGVS = [VERIFY, [*VERIFY, "--rollback", "--restore-env", "--runtime-unit", "r.service"],
         ["facts", "--unit", "u.service", "--port", "1", "--agent", "a"],
         ["rollback", "--unit", "u.service", "--port", "2", "--to", "0123456789ab"],
         ["switch", "0123456789ab"], ["prune", "--keep", "3"],
         ["state", "list", "--agent", "a"]]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda argv: " ".join(argv[:2]))
def test_the_parser_of_one_command_reads_it_as_the_whole_parser(argv: list[str]) -> None:
    assert (nodectl.build_parser(argv[0]).parse_args(argv)
            == nodectl.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [["verify", "--port", "x"], ["verify", "--release", "../x"],
                                  ["nonsense"], []])
def test_what_the_whole_parser_refuses_one_command_refuses(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    with pytest.raises(SystemExit) as refused:
        nodectl.main(argv)
    assert refused.value.code == 2
    assert "usage: fleet-nodectl" in capsys.readouterr().err


def parsed(parser: Any, argv: list[str]) -> tuple[Any, Any, str, str]:
    """What ``parser`` makes of ``argv``: its Namespace or exit code, and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return parser.parse_args(argv), None, out.getvalue(), err.getvalue()
        except SystemExit as refused:
            return None, refused.code, out.getvalue(), err.getvalue()


TOKENS = ["snapshot", "list", "restore", "retire", "--unit", "--uni", "--unit=u.service",
          "--port", "--port=1", "1", "x", "--release", "0123456789ab", "--rel", "--rollback",
          "--runtime-unit", "--agent", "a", "--login-user", "--to", "--with-state", "--keep",
          "--timeout", "--snapshot", "20250101T000000000000Z", "--purge", "-h", "--", "-x"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(nodectl.COMMANDS), st.lists(st.sampled_from(TOKENS), max_size=8))
def test_one_commands_parser_answers_any_argv_as_the_whole_parser(command: str,
                                                                  rest: list[str]) -> None:
    """Accepted alike with the same Namespace, refused alike with the same messages: an
    "unrecognized arguments" error (the top parser's) named only the one command built."""
    argv = [command, *rest]
    assert parsed(nodectl.build_parser(command), argv) == parsed(nodectl.build_parser(), argv)


def test_a_verify_run_imports_neither_subprocess_nor_the_idna_codec() -> None:
    """Run as on a node (``-I``, the module on its own): a verify of an agent with no gateway
    (nothing listening on its port) answers its JSON, and what it imported is listed."""
    script = ("import sys, json; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
              "from fleet.node import nodectl; nodectl.main(sys.argv[2:]); "
              "print(json.dumps(sorted(set(sys.modules) - before)))")
    argv = [*VERIFY[:4], "1", "--timeout", "0.2", *VERIFY[7:]]
    done = subprocess.run([sys.executable, "-I", "-c", script, str(REPO), *argv],
                          capture_output=True, text=True, check=True, timeout=60)
    outcome, imported = map(json.loads, done.stdout.splitlines())
    assert outcome["ok"] is False and outcome["problems"]
    assert "facts" in outcome and isinstance(outcome["facts"]["ports"], list)
    assert not {"subprocess", "encodings.idna"} & set(imported), imported


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBff3HrNM0Ju0SqmsDMUM4PzkNvVa0Z7kDmrWhVVGQqz"


def test_files_with_bytes_that_are_not_utf8_are_read_not_failed(tmp_path: Path) -> None:
    """An admin's authorized_keys or sudoers with a Latin-1 comment (or a sudoers.d file so
    named) is read with U+FFFD for those bytes: its keys are fingerprinted, its rules listed,
    and the facts stay JSON a UTF-8 record can hold."""
    keys = tmp_path / "authorized_keys"
    keys.write_bytes(f"{KEY} jos\xe9@laptop\n".encode("latin-1") + b"\xff\xfe\x00junk\n")
    lines = nodectl.text_lines(keys)
    assert lines[0] == f"{KEY} jos\ufffd@laptop" and len(lines) == 2
    digest = hashlib.sha256(base64.b64decode(KEY.split()[1])).digest()
    assert [nodectl.fingerprint(line) for line in lines] == [
        "SHA256:" + base64.b64encode(digest).decode().rstrip("="), None]
    assert nodectl.text_lines(tmp_path / "missing") == []
    (tmp_path / "sudoers").write_bytes(b"root ALL=(ALL) ALL # caf\xe9\n#comment\n")
    (tmp_path / "sudoers.d").mkdir()
    (tmp_path / "sudoers.d" / "ops").write_bytes(b"op ALL=(ALL) NOPASSWD: ALL\n")
    with open(os.fsencode(tmp_path / "sudoers.d") + b"/caf\xe9", "wb") as latin1_named:
        latin1_named.write(b"x ALL=ALL\n")
    found = nodectl.sudoers(tmp_path)
    assert found == ["sudoers: root ALL=(ALL) ALL # caf\ufffd",
                     "caf\ufffd: x ALL=ALL", "ops: op ALL=(ALL) NOPASSWD: ALL"]
    json.dumps(found, ensure_ascii=False).encode("utf-8")  # no lone surrogates


def test_a_fifo_among_the_admin_files_is_skipped_not_waited_on(tmp_path: Path) -> None:
    """A FIFO as authorized_keys (its login user can make one) or in sudoers.d has no writer:
    reading it would wait forever, and verify, and the deploy with it (a link to /dev/zero would
    fill the memory). Neither is a file of lines: none are read from it (as from a directory)."""
    os.mkfifo(tmp_path / "authorized_keys")
    (tmp_path / "sudoers.d").mkdir()
    os.mkfifo(tmp_path / "sudoers.d" / "fifo")
    (tmp_path / "sudoers.d" / "ops").write_text("op ALL=(ALL) NOPASSWD: ALL\n")
    (tmp_path / "sudoers.d" / "zero").symlink_to("/dev/zero")  # endless: never read either
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
              "from fleet.node import nodectl; etc = Path(sys.argv[2]); "
              "print(nodectl.text_lines(etc / 'authorized_keys'), nodectl.sudoers(etc))")
    done = subprocess.run([sys.executable, "-c", script, str(REPO), str(tmp_path)],
                          capture_output=True, text=True, timeout=10, check=True)
    assert done.stdout == "[] ['ops: op ALL=(ALL) NOPASSWD: ALL']\n"
