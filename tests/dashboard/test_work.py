"""The dashboard's Work section: the orchestrator's work items (counts per state, the newest
items with state, issue link, assignee, pull request link, reason) read from its work API
with the operator's key; in Chromium with axe clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from fleet.dashboard.app import create_app
from fleet.dashboard.data import link
from tests.bus.conftest import write_operator_secrets
from tests.dashboard.browser import axe_violations, chromium, watched_page
from tests.dashboard.conftest import closed_port
from tests.ports import free_port
from tests.work.items_gateway import failed, gateway_app, issue, proposed, serving


def work_registry(folder: Path, port: int) -> Path:
    """ezra (orchestrator, its gateway on ``port``) and bezalel (down); nothing pinned, so
    nothing is probed over SSH."""
    (folder / "known_hosts").write_text("")
    path = folder / "registry.yaml"
    path.write_text(f"""\
fleet:
  name: loop
  known_hosts: known_hosts
wizards:
  ezra:
    host: 127.0.0.1
    role: orchestrator
    model: m
    ssh_port: {closed_port()}
    gateway_port: {port}
  bezalel:
    host: 127.0.0.1
    role: worker
    model: m
    ssh_port: {closed_port()}
    gateway_port: {closed_port()}
""")
    return path


@pytest.fixture
def work_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The orchestrator's gateway served with three items, the operator's key in
    $FLEET_SECRETS: the items' ids by state."""
    port = free_port()
    registry = work_registry(tmp_path, port)
    (tmp_path / "records").mkdir()
    monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(tmp_path)))
    state = tmp_path / "state"
    app = gateway_app(registry, state)
    made = {"queued": issue(state, 1, "Add <b>bold</b> titles"), "failed": failed(state, 2),
            "proposed": proposed(state, 3)}
    with serving(app, port):
        yield made


def dashboard_client(folder: Path) -> FlaskClient:
    return create_app({"REGISTRY_PATH": str(folder / "registry.yaml"),
                       "RECORDS_DIR": str(folder / "records"), "REFRESH_S": 2.0}).test_client()


def test_the_work_section_counts_states_and_lists_the_newest_items(
        tmp_path: Path, work_fleet: dict[str, str]) -> None:
    client = dashboard_client(tmp_path)
    work = client.get("/dashboard/state.json").json["work"]
    assert work["problem"] is None
    assert work["counts"] == {"queued": 1, "working": 0, "proposed": 1, "failed": 1,
                              "closed": 0}
    assert [(row["item_id"], row["state"], row["assignee"]) for row in work["items"]] == [
        (work_fleet["proposed"], "proposed", "bezalel"),
        (work_fleet["failed"], "failed", "bezalel"), (work_fleet["queued"], "queued", None)]
    page = client.get("/dashboard/").get_data(as_text=True)
    assert '<a href="http://192.0.2.5:3000/acme/shop/pulls/103">' in page
    assert '<a href="http://192.0.2.5:3000/acme/shop/issues/2">acme/shop#2 (gitea)</a>' in page
    assert "tests still fail after 20 steps" in page
    assert "Add &lt;b&gt;bold&lt;/b&gt; titles" in page  # a title is text, never markup


def test_work_that_cannot_be_read_is_said_with_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work_registry(tmp_path, closed_port())
    (tmp_path / "records").mkdir()
    monkeypatch.setenv("FLEET_SECRETS", str(write_operator_secrets(tmp_path)))
    work = dashboard_client(tmp_path).get("/dashboard/state.json").json["work"]
    assert work["items"] == [] and "cannot reach the gateway" in work["problem"]
    page = dashboard_client(tmp_path).get("/dashboard/").get_data(as_text=True)
    assert "The work items could not be read: " in page


def test_only_http_urls_become_links() -> None:
    assert link("https://forge.example/acme/shop/pulls/1") == (
        "https://forge.example/acme/shop/pulls/1")
    assert link("javascript:alert(1)") is None
    assert link("http://a/\nb") is None and link(None) is None


@pytest.mark.slow
def test_the_work_section_in_chromium_is_axe_clean(
        tmp_path: Path, work_fleet: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    app = create_app({"REGISTRY_PATH": str(tmp_path / "registry.yaml"),
                      "RECORDS_DIR": str(tmp_path / "records"), "REFRESH_S": 2.0})
    port = free_port()
    with serving(app, port) as url, sync_playwright() as playwright:
        browser = chromium(playwright)
        try:
            page, errors = watched_page(browser)
            page.goto(f"{url}/dashboard/")
            rows = page.locator("tr[data-work]")
            assert rows.count() == 3
            assert [rows.nth(n).get_attribute("data-state") for n in range(3)] == [
                "proposed", "failed", "queued"]
            failed_row = page.locator(f'tr[data-work="{work_fleet["failed"]}"]')
            assert "tests still fail after 20 steps" in failed_row.inner_text()
            assert page.locator("#work-counts").inner_text().split() == [
                "1", "queued", "0", "working", "1", "proposed", "1", "failed", "0", "closed"]
            pull = page.locator(f'tr[data-work="{work_fleet["proposed"]}"] a').nth(1)
            assert pull.get_attribute("href") == "http://192.0.2.5:3000/acme/shop/pulls/103"
            assert axe_violations(page) == []
            page.set_viewport_size({"width": 390, "height": 900})
            phone = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert phone[0] <= phone[1], phone  # nothing to scroll sideways on a phone
            assert errors == []
        finally:
            browser.close()
