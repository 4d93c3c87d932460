"""The dashboard's charts: run history (duration and outcome per run, each linked to its
record) and each agent's bus traffic over the last hour, sampled from ``/metrics``; drawn as
SVG on the server, readable without colour."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from flask.testing import FlaskClient

from fleet.dashboard.app import create_app
from fleet.dashboard.charts import (
    BUCKET_S,
    HISTORY_S,
    BusHistory,
    Sample,
    per_minute,
    run_chart,
    traffic,
)
from tests.dashboard.conftest import RUN_ID

NOW = 1_800_000_000.0


def test_each_run_is_a_bar_as_high_as_it_took_with_its_outcome_as_a_shape() -> None:
    chart = run_chart([  # newest first, as the records come
        ("r3", "failed", "2026-12-06T10:02:00Z", "2026-12-06T10:02:05Z"),
        ("r2", "degraded", "2026-12-06T10:01:00Z", None),
        ("r1", "ok", "2026-12-06T10:00:00Z", "2026-12-06T10:00:20Z")])
    assert [(bar.run_id, bar.shape, bar.seconds) for bar in chart.bars] == [
        ("r1", "circle", 20.0), ("r2", "triangle", None), ("r3", "cross", 5.0)]
    assert chart.top_s == 20
    r1, r2, r3 = chart.bars
    assert r1.height == chart.plot_bottom - chart.plot_top  # the longest reaches the top
    assert r3.height == r1.height / 4 and r2.height == 0
    assert r1.x < r2.x < r3.x  # oldest on the left


def test_traffic_counts_messages_per_minute_across_a_counter_reset() -> None:
    start = NOW - 3 * BUCKET_S
    samples = [Sample(start + 1, 100, 50, 0), Sample(start + 30, 110, 55, 3),
               Sample(start + 61, 130, 60, 1),  # 20 in, 5 out in the next minute
               Sample(start + 130, 4, 2, 0)]  # the store was recreated: counts from zero
    minutes = per_minute(samples, NOW)
    assert len(minutes) == HISTORY_S / BUCKET_S
    assert minutes[-3:] == [(10, 5, 3), (20, 5, 1), (4, 2, 0)]
    assert minutes[:-3] == [(0, 0, 0)] * (len(minutes) - 3)
    chart = traffic("alpha", samples, NOW)
    assert (chart.total_in, chart.total_out, chart.peak_per_minute, chart.peak_outbox) == (
        34, 12, 20, 3)
    assert chart.minutes == 2
    assert len(chart.inbound.split()) == 60 and len(chart.outbox.split()) == 60


def test_the_history_keeps_an_hour_and_skips_agents_that_did_not_answer() -> None:
    clock = [NOW]
    history = BusHistory(lambda name: {}, clock=lambda: clock[0])
    history.agents = ("alpha",)
    for minute in range(90):
        clock[0] = NOW + minute * BUCKET_S
        history.record("alpha", {"fleet_bus_received_total": minute,
                                 "fleet_bus_delivered_total": 0, "fleet_bus_outbox_depth": 0})
    history.record("alpha", {})  # no answer: no sample
    kept = history.samples["alpha"]
    assert len(kept) == 62 and kept[-1].received == 89
    (chart,) = history.charts()
    assert chart.total_in == 60  # one a minute over the last hour


def test_the_page_draws_both_charts_without_colour_alone(fleet_dir: Path) -> None:
    app = create_app({"REGISTRY_PATH": str(fleet_dir / "registry.yaml"),
                      "RECORDS_DIR": str(fleet_dir / "records"), "REFRESH_S": 2.0})
    source = app.extensions["fleet.dashboard"]["source"]
    source.history.record("alpha", {"fleet_bus_received_total": 5,
                                    "fleet_bus_delivered_total": 2,
                                    "fleet_bus_outbox_depth": 1})
    client: FlaskClient = app.test_client()
    html = client.get("/dashboard/").get_data(as_text=True)
    svgs = re.findall(r"<svg .*?</svg>", html, re.S)
    assert len(svgs) >= 3  # the run history and one per agent
    for svg in svgs:
        ElementTree.fromstring(svg)  # well-formed
    history = svgs[0]
    assert 'role="group"' in history  # its bars are links: not an image (axe nested-interactive)
    assert all('role="img"' in svg for svg in svgs[1:])
    assert f'href="/dashboard/runs/{RUN_ID}.json"' in history
    status = json.loads(client.get(f"/dashboard/runs/{RUN_ID}.json").get_data())["status"]
    assert f">{status}</text>" in history  # the outcome as a word, not a colour only
    assert "<title>run " in history and "<desc" in history
    assert 'data-agent="alpha"' in html and "Bus traffic, last hour" in html
    state = client.get("/dashboard/state.json").get_json()
    assert state["run_chart"]["bars"][0]["run_id"] == RUN_ID
    assert [item["agent"] for item in state["traffic"]] == ["alpha", "beta"]
    source.history.stop()
