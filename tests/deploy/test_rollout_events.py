"""The wire form of host phases (``fleet.control.rollout_events``): what a stage's pyinfra
process sends is read back as sent; a host or phase of another shape is refused where it is
sent and skipped where it is read, and no input makes the reader fail."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.control import rollout_events as ev

hosts = st.from_regex(ev.HOST_RE, fullmatch=True)
phases = st.from_regex(ev.PHASE_RE, fullmatch=True)


@given(st.lists(st.tuples(hosts, phases), max_size=5))
def test_sent_phases_are_read_back_as_sent(sent: list[tuple[str, str]]) -> None:
    stream = io.BytesIO(b"".join(ev.phase_line(host, phase) for host, phase in sent))
    assert list(ev.read_phases(stream)) == [ev.HostPhase(host, phase) for host, phase in sent]


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_host_or_phase_of_another_shape_is_refused(host: str, phase: str) -> None:
    if ev.HOST_RE.fullmatch(host) and ev.PHASE_RE.fullmatch(phase):
        assert ev.phase_line(host, phase).endswith(b"\n")
    else:
        with pytest.raises(ValueError, match="not a host phase"):
            ev.phase_line(host, phase)


@given(st.lists(st.binary(max_size=80), max_size=5), hosts, phases)
def test_the_reader_skips_what_is_not_a_phase(noise: list[bytes], host: str,
                                              phase: str) -> None:
    lines = [line.replace(b"\n", b" ") + b"\n" for line in noise]
    stream = io.BytesIO(b"".join(lines) + ev.phase_line(host, phase))
    assert list(ev.read_phases(stream))[-1] == ev.HostPhase(host, phase)


@pytest.mark.parametrize("line", [b'{"host": "a", "phase": "x\\n"}\n', b'["a", "x"]\n',
                                  b'{"host": "A B", "phase": "x"}\n', b"{" * 600 + b"\n"])
def test_lines_of_another_shape_are_skipped(line: bytes) -> None:
    assert list(ev.read_phases(io.BytesIO(line))) == []


def test_sending_outside_a_rollout_or_to_a_closed_pipe_does_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ev.PHASE_FD_ENV, raising=False)
    ev.send_phase("bezalel", "release")
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setenv(ev.PHASE_FD_ENV, str(write))
    try:
        ev.send_phase("bezalel", "release")  # EPIPE (SIGPIPE is ignored by Python)
    finally:
        os.close(write)
