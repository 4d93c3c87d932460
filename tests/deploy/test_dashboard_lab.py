"""The dashboard of a deployed lab in a real browser (Debian's chromium driven by Playwright):
every agent healthy with its release; an agent whose service stops shows down within one
refresh interval without a reload; no console errors; axe-core finds no accessibility
violation; at a phone's 390 px nothing scrolls sideways and every agent's state is on
screen. Screenshots are kept in ``$FLEET_TEST_ARTIFACTS`` (default ``artifacts/``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.dashboard.browser import axe_violations, chromium, watched_page
from tests.deploy.conftest import Fleet
from tests.ports import free_port
from tests.waiting import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
REFRESH_S = 3.0
PROBE_SLACK_S = 3.0  # one probe of the fleet (SSH and /health) on a loaded 2-core machine
WORKER = "allegro"


def artifacts() -> Path:
    path = Path(os.environ.get("FLEET_TEST_ARTIFACTS") or REPO / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def dashboard_url(fleet: Fleet) -> Iterator[str]:
    """A deployed lab and ``fleet dashboard`` serving it on loopback."""
    done = fleet.run("deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from fleet.cli import main; main()", "--registry",
         str(fleet.registry), "dashboard", "--port", str(port), "--refresh", str(REFRESH_S)],
        cwd=fleet.clone, env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/dashboard/"
    try:
        def answers() -> bool:
            try:
                return requests.get(url, timeout=10).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, 30, "fleet dashboard to answer", every=0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dashboard_shows_health_then_a_stopped_agent_without_reload(
        fleet: Fleet, dashboard_url: str) -> None:
    from playwright.sync_api import sync_playwright

    release = fleet.record(fleet.run("deploy").stdout)["release"]
    assert fleet.run("deploy").returncode == 0  # three deploys in the run history
    for number in range(15):  # a burst of messages every agent receives
        sent = fleet.run("bus", "send", "*", "broadcast", f'{{"burst": {number}}}')
        assert sent.returncode == 0, sent.stdout + sent.stderr

    def burst_sampled() -> bool:
        state = requests.get(dashboard_url + "state.json", timeout=10).json()
        return any(item["total_in"] >= 15 for item in state["traffic"])

    wait_for(burst_sampled, 60, "the dashboard to sample the burst from /metrics", every=1)
    with sync_playwright() as playwright:
        browser = chromium(playwright)
        try:
            page, errors = watched_page(browser)
            page.goto(dashboard_url)
            rows = page.locator("tr[data-agent]")
            assert rows.count() == 3
            for index in range(3):
                row = rows.nth(index)
                assert row.get_attribute("data-state") == "ok", row.inner_text()
                assert release in row.inner_text()
            assert axe_violations(page) == []  # the charts too
            bars = page.locator("svg.chart a.bar")
            assert bars.count() >= 3
            statuses = [bars.nth(i).get_attribute("data-status") for i in range(bars.count())]
            assert statuses[-3:] == ["ok", "ok", "ok"]  # the newest three, on the right
            assert page.locator("svg.chart a.bar").last.locator("text").first.text_content() \
                == "ok"  # the outcome written under its bar
            assert page.locator("ul.traffic li svg.spark").count() == 3
            assert any(int(text.split(" in,")[0]) >= 15 for text in
                       page.locator("ul.traffic li > .sub").all_inner_texts())
            page.screenshot(path=str(artifacts() / "dashboard-healthy.png"), full_page=True)
            page.evaluate("window.loadedOnce = true")  # gone if the page reloads

            fleet.ssh(WORKER, f"systemctl stop fleet-agent-{WORKER}.service")
            try:
                started = time.monotonic()
                page.wait_for_selector(f'tr[data-agent="{WORKER}"][data-state="down"]',
                                       timeout=(REFRESH_S + PROBE_SLACK_S) * 1000)
                waited = time.monotonic() - started
                assert page.evaluate("window.loadedOnce") is True
                assert page.locator(f'tr[data-agent="{WORKER}"] .badge').inner_text() == "down"
                page.screenshot(path=str(artifacts() / "dashboard-agent-down.png"),
                                full_page=True)
                page.set_viewport_size({"width": 390, "height": 900})
                page.screenshot(path=str(artifacts() / "dashboard-phone.png"), full_page=True)
                phone = page.evaluate(  # reads well on a phone: nothing to scroll sideways
                    "[document.documentElement.scrollWidth, window.innerWidth]")
                assert phone[0] <= phone[1], phone
                for index in range(3):  # every agent's state is on screen, not cut off
                    badge = rows.nth(index).locator(".badge").bounding_box()
                    assert badge is not None and badge["x"] >= 0, badge
                    assert badge["x"] + badge["width"] <= 390, badge
            finally:
                fleet.ssh(WORKER, f"systemctl start fleet-agent-{WORKER}.service")
            assert waited < REFRESH_S + PROBE_SLACK_S  # within one refresh (and its probe)
            assert errors == []
        finally:
            browser.close()
