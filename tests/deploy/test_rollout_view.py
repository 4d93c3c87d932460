"""The live view of a rollout (``fleet.cli.progress.RolloutView``), rendered from sequences of
the rollout's typed events: stages with their hosts' phases while they run, then outcomes with
a failure's reason in place, a stopped rollout, and a rollback."""

from __future__ import annotations

import io

from fleet.cli.progress import RolloutView
from fleet.control import rollout_events as ev

DEPLOY = ev.RolloutPlanned(run_id="run-1", kind="deploy", release="rel-1", dry=False, stages=(
    ev.StagePlan("canary", None, ("ezra-primary",)),
    ev.StagePlan("workers", None, ("bezalel", "allegro")),
    ev.StagePlan("workers", None, ("worker-04", "worker-05"))))
LOCKED = "deploy lock /run/fleet-deploy.lock is held by elsewhere:1:run-x"
CANARY_OK_BEZALEL_FAILED: list[ev.RolloutEvent] = [  # batch 2 starts as batch 1 ends
    DEPLOY, ev.StageStarted(0), ev.StageStarted(1), ev.HostDone("ezra-primary", "ok"),
    ev.StageStarted(2), ev.HostDone("bezalel", "failed", LOCKED)]
SKIPPED = "not deployed: 1 host(s) of earlier rollout stages failed (allowed: 0)"


def screen(events: list[ev.RolloutEvent], now: float = 30.0) -> str:
    """The view, 100 columns wide, after ``events`` (stages start at 10 s, 20 s, ...; the
    clock says ``now``)."""
    starts = iter([10.0, 20.0, 30.0])
    at = [now]
    view = RolloutView(clock=lambda: at[0])
    for event in events:
        at[0] = next(starts) if isinstance(event, ev.StageStarted) else now
        view.observe(event)
    at[0] = now
    out = io.StringIO()
    view.console.file = out
    view.console.width = 100
    view.console.print(view.render())
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


def test_hosts_show_their_phase_while_their_stage_runs() -> None:
    assert screen([DEPLOY, ev.StageStarted(0), ev.HostPhase("ezra-primary", "release"),
                   ev.StageStarted(1), ev.HostPhase("bezalel", "waiting")]) == """\
deploy release rel-1, run run-1
canary                running      20 s
  ezra-primary        release
workers batch 1 of 2  running      10 s
  bezalel             waiting
  allegro             connecting
workers batch 2 of 2  pending
  worker-04           pending
  worker-05           pending"""


def test_canary_ok_then_a_batch_with_a_failed_host_and_its_reason() -> None:
    assert screen([*CANARY_OK_BEZALEL_FAILED, ev.HostDone("allegro", "ok"),
                   ev.HostDone("worker-04", "ok"), ev.HostPhase("worker-05", "verify")]) == f"""\
deploy release rel-1, run run-1
canary                ok
  ezra-primary        ok
workers batch 1 of 2  not ok       1 ok, 1 failed
  bezalel             failed       {LOCKED}
  allegro             ok
workers batch 2 of 2  running      0 s
  worker-04           ok
  worker-05           verify"""


def test_a_stopped_rollout_shows_why_a_rolled_back_host_and_the_skipped_batch() -> None:
    assert screen([*CANARY_OK_BEZALEL_FAILED,
                   ev.HostDone("allegro", "rolled_back", "verify failed: /health answers 503"),
                   ev.RolloutStopped("2 host(s) failed (allowed: 0)"),
                   ev.HostDone("worker-04", "skipped", SKIPPED),
                   ev.HostDone("worker-05", "skipped", SKIPPED),
                   ev.RolloutFinished("failed")]) == f"""\
deploy release rel-1, run run-1
canary                ok
  ezra-primary        ok
workers batch 1 of 2  not ok       1 failed, 1 rolled back
  bezalel             failed       {LOCKED}
  allegro             rolled back  verify failed: /health answers 503
workers batch 2 of 2  skipped
  worker-04           skipped      not deployed: 1 host(s) of earlier rollout stages failed
                                   (allowed: 0)
  worker-05           skipped      not deployed: 1 host(s) of earlier rollout stages failed
                                   (allowed: 0)
stopped: 2 host(s) failed (allowed: 0); the later stages change nothing
run run-1: failed"""


def test_a_rollback_run_over_regions() -> None:
    planned = ev.RolloutPlanned(run_id="run-2", kind="rollback", release="", dry=False,
                                stages=(ev.StagePlan("canary", "eu", ("ezra-primary",)),
                                        ev.StagePlan("workers", "us", ("allegro",))))
    assert screen([planned, ev.StageStarted(0), ev.HostDone("ezra-primary", "ok"),
                   ev.StageStarted(1), ev.HostPhase("allegro", "rollback")]) == """\
rollback, run run-2
eu canary       ok
  ezra-primary  ok
us workers      running      10 s
  allegro       rollback"""


def test_a_long_reason_folds_within_its_column() -> None:
    reason = "; ".join(f"problem number {n} of the node" for n in range(6))
    lines = screen([DEPLOY, ev.StageStarted(0), ev.HostDone("ezra-primary", "failed", reason)]
                   ).splitlines()
    assert all(len(line) <= 100 for line in lines)
    column = lines[2].index("problem")
    assert " ".join(line[column:] for line in lines[2:5]) == reason
    assert lines[5].startswith("workers batch 1 of 2")


def test_a_nodes_words_never_reach_the_terminal_as_escape_sequences() -> None:
    """A reason from a node (its nodectl's JSON) or a stop's why holding ESC, OSC 52 (a
    clipboard write), CSI and C1 characters is drawn escaped: no control byte reaches the
    screen."""
    hostile = "boom \x1b]52;c;aGFjaw==\x07 \x1b[2J\x1b[31mRED \x9b31m"
    done = ev.HostDone("bezalel", "failed", hostile)
    stopped = ev.RolloutStopped(hostile)
    for text in (done.reason, stopped.why):
        assert not any(ord(char) < 32 or 0x7f <= ord(char) < 0xa0 for char in text), text
        assert "boom" in text and "RED" in text
    drawn = screen([DEPLOY, ev.StageStarted(0), ev.HostDone("ezra-primary", "ok"),
                    ev.StageStarted(1), done, stopped])
    assert "\x1b" not in drawn and "\x07" not in drawn and "\x9b" not in drawn
    assert "boom \\x1b]52;c;aGFjaw==\\x07" in drawn
