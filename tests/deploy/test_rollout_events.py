"""The wire form of host phases (``fleet.control.rollout_events``): what a stage's pyinfra
process sends is read back as sent; a host or phase of another shape is refused where it is
sent and skipped where it is read, and no input makes the reader fail."""

from __future__ import annotations

import io
import os
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.control import rollout_events as ev

hosts = st.from_regex(ev.HOST_RE, fullmatch=True)
phases = st.from_regex(ev.PHASE_RE, fullmatch=True)


@given(st.lists(st.tuples(hosts, phases), max_size=5))
def test_sent_phases_are_read_back_as_sent(sent: list[tuple[str, str]]) -> None:
    stream = io.BytesIO(b"".join(ev.phase_line(host, phase) for host, phase in sent))
    assert list(ev.read_notes(stream)) == [ev.HostPhase(host, phase) for host, phase in sent]


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
    assert list(ev.read_notes(stream))[-1] == ev.HostPhase(host, phase)


@pytest.mark.parametrize("line", [b'{"host": "a", "phase": "x\\n"}\n', b'["a", "x"]\n',
                                  b'{"host": "A B", "phase": "x"}\n', b"{" * 600 + b"\n"])
def test_lines_of_another_shape_are_skipped(line: bytes) -> None:
    assert list(ev.read_notes(io.BytesIO(line))) == []


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


@given(st.lists(st.one_of(st.tuples(hosts, phases), hosts), max_size=6))
def test_recorded_notes_come_between_phases_as_sent(sent: list[tuple[str, str] | str]) -> None:
    stream = io.BytesIO(b"".join(ev.recorded_line(note) if isinstance(note, str)
                                 else ev.phase_line(*note) for note in sent))
    assert list(ev.read_notes(stream)) == [
        ev.HostRecorded(note) if isinstance(note, str) else ev.HostPhase(*note) for note in sent]


@pytest.mark.parametrize("line", [b'{"host": "a", "recorded": 1}\n',
                                  b'{"host": "a", "recorded": true, "phase": "x"}\n',
                                  b'{"host": "a\xc3\xa9", "recorded": true}\n',
                                  b'{"host": "a", "recorded": true}',  # cut by the end
                                  b'{"host": "a", "recorded": true' + b" " * 600 + b"}\n"])
def test_recorded_notes_of_another_shape_are_skipped(line: bytes) -> None:
    assert list(ev.read_notes(io.BytesIO(line))) == []


def test_a_recorded_note_for_a_bad_host_name_is_refused() -> None:
    with pytest.raises(ValueError, match="not a host name: 'A B'"):
        ev.recorded_line("A B")


def test_recorded_outside_a_rollout_or_to_a_closed_pipe_does_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ev.PHASE_FD_ENV, raising=False)
    ev.send_recorded("bezalel")
    read, write = os.pipe()
    os.close(read)
    monkeypatch.setenv(ev.PHASE_FD_ENV, str(write))
    try:
        ev.send_recorded("bezalel")
    finally:
        os.close(write)


def read_verdict_pipe(data: bytes, monkeypatch: pytest.MonkeyPatch) -> ev.VerdictPipe:
    """A verdict pipe that got ``data`` and then its end, read to that end."""
    read, write = os.pipe()
    try:
        monkeypatch.setenv(ev.VERDICT_FD_ENV, str(read))
        pipe = ev.verdict_pipe()
        assert pipe is not None and ev.verdict_pipe() is pipe  # one per process
        writer = threading.Thread(target=lambda: (os.write(write, data), os.close(write)))
        writer.start()
        while not pipe.closed:
            assert pipe.wait(pipe.notes, 10)
        writer.join()
        return pipe
    finally:
        os.close(read)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(lines=st.lists(st.one_of(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
                                st.integers(0, ev.MAX_STAGE - 1).map(ev.verdict_line)),
                      max_size=8))
def test_the_verdict_pipe_counts_exactly_the_stage_numbers(
        lines: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    expected = sum(1 for line in data.split(b"\n")[:-1]
                   if 1 <= len(line) <= 6 and all(48 <= byte <= 57 for byte in line))
    assert read_verdict_pipe(data, monkeypatch).notes == expected


def test_the_verdict_pipe_ignores_long_lines_cut_across_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert read_verdict_pipe(b"1" * 70000 + b"\n2\n", monkeypatch).notes == 1


@pytest.mark.parametrize("value", ["", "x", "-1", "99999999999", "0"])
def test_without_a_verdict_pipe_there_is_none(value: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing, not a number, or not a pipe (fd 0 is the terminal or /dev/null here)."""
    monkeypatch.setenv(ev.VERDICT_FD_ENV, value)
    assert ev.verdict_pipe() is None


def test_verdict_lines_are_stage_numbers() -> None:
    assert ev.verdict_line(3) == b"3\n"
    with pytest.raises(ValueError, match="not a stage number: -1"):
        ev.verdict_line(-1)
