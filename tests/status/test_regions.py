"""Agents grouped by region: ``fleet status`` (table, summary, JSON), ``fleet runs show``, and
the order every probe answers in."""

from __future__ import annotations

from pathlib import Path

from fleet.cli.runs import format_run
from fleet.cli.status import by_region, format_table, region_summary
from fleet.control.expected import Judgement
from fleet.control.status import AgentStatus, region_sorted
from fleet.core.registry import parse_registry

REGISTRY = """\
fleet:
  regions: [us, eu]
wizards:
  o: {host: 192.0.2.1, role: orchestrator, model: m, region: eu}
  e: {host: 192.0.2.2, role: worker, model: m, region: eu}
  u: {host: 192.0.2.3, role: worker, model: m, region: us}
"""


def judged(state: str) -> Judgement:
    return Judgement(state=state, release="ok", soul="ok", config="ok", drift=())


def test_agents_come_in_region_order() -> None:
    registry = parse_registry(REGISTRY, Path("registry.yaml"))
    assert [agent.name for agent in region_sorted(registry)] == ["u", "o", "e"]
    free_text = parse_registry(REGISTRY.replace("fleet:\n  regions: [us, eu]\n", ""),
                               Path("r.yaml"))
    assert [agent.name for agent in region_sorted(free_text)] == ["o", "e", "u"]


def test_status_groups_by_region() -> None:
    results = [AgentStatus("u", "worker", "192.0.2.3", region="us"),
               AgentStatus("o", "orchestrator", "192.0.2.1", region="eu"),
               AgentStatus("e", "worker", "192.0.2.2", region="eu")]
    verdicts = [judged("down"), judged("ok"), judged("drift")]
    assert format_table(results, verdicts, regional=True).splitlines()[0].split()[:4] == [
        "AGENT", "ROLE", "REGION", "HOST"]
    assert by_region(results, verdicts) == [("us", {"u": "down"}),
                                            ("eu", {"o": "ok", "e": "drift"})]
    assert region_summary(results, verdicts) == ["region us: 1 agent(s): 1 down",
                                                 "region eu: 2 agent(s): 1 ok, 1 drift"]
    assert "REGION" not in format_table(results, verdicts)  # a fleet without fleet.regions


def test_runs_show_lists_hosts_under_their_region() -> None:
    run = {"id": 7, "status": "degraded", "tag": "v1", "sha": "a" * 40, "pusher": "p",
           "forge": "gitea", "delivery_id": "d", "queued_at": "t", "started_at": None,
           "ended_at": None, "exit_status": 1, "summary": "", "health": [],
           "stages": [{"stage": "canary", "region": "eu", "hosts": ["o"], "outcome": {"o": "ok"}},
                      {"stage": "workers", "region": "us", "hosts": ["u"],
                       "outcome": {"u": "skipped"}}],
           "hosts": {"u": {"status": "skipped", "reason": "region us is unreachable"},
                     "o": {"status": "ok"}}}
    lines = format_run(run).splitlines()
    assert "  stage workers (us): u skipped" in lines
    assert [line.split()[0:2] for line in lines if line.startswith("  ") and
            not line.startswith("  stage")] == [["region", "eu:"], ["o", "ok"],
                                                 ["region", "us:"], ["u", "skipped"]]


def test_a_partial_webhook_deploy_is_degraded(tmp_path: Path) -> None:
    """A run that skipped an unreachable region deployed the others: the receiver's run is
    ``degraded`` (not ``failed``), naming the skipped hosts."""
    import json

    from fleet.webhook.runner import record_outcome

    record = tmp_path / "run.json"
    record.write_text(json.dumps({
        "status": "partial", "release": "r1", "unreachable_regions": ["us"], "skipped": [],
        "stages": [{"stage": "canary", "region": "eu", "hosts": ["o"]},
                   {"stage": "workers", "region": "us", "hosts": ["u"]}],
        "hosts": {"o": {"status": "ok"}, "u": {"status": "skipped", "unreachable": True,
                                               "reason": "region us is unreachable"}}}))
    outcome = record_outcome(record, 1)
    assert outcome.status == "degraded"
    assert "u" in outcome.summary


def test_status_think_shows_each_agents_model_and_round_trip() -> None:
    results = [AgentStatus("o", "orchestrator", "192.0.2.1", ssh="ok", health="ok",
                           release="abc", model="lab/smollm2", round_trip_ms=312.4),
               AgentStatus("e", "worker", "192.0.2.2", ssh="ok", health="HTTP 503: x",
                           model="lab/smollm2")]
    verdicts = [judged("ok"), judged("down")]
    assert format_table(results, verdicts, think=True).splitlines()[:3] == [
        "AGENT  ROLE          HOST       SSH  HEALTH  RELEASE  SOUL  MODEL        ROUND TRIP  "
        "STATE",
        "o      orchestrator  192.0.2.1  ok   ok      abc      -     lab/smollm2  312 ms      ok",
        "e      worker        192.0.2.2  ok   FAIL    -        -     lab/smollm2  -           "
        "down"]
    assert "MODEL" not in format_table(results, verdicts)  # only with --think
