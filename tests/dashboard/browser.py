"""The dashboard in a real browser: Debian's chromium driven by Playwright (its own browser
download cannot work here), and axe-core's accessibility checks run in the page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"


def chromium(playwright: Playwright) -> Browser:
    """Debian's chromium, headless, with nothing of its own on the network."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"])


def watched_page(browser: Browser) -> tuple[Page, list[str]]:
    """A new desktop-sized page, and the list its console errors and page errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


def axe_violations(page: Page) -> list[str]:
    """What axe-core finds on ``page`` (WCAG 2.1 A and AA, and best practice): ``id: help``."""
    page.add_script_tag(path=str(AXE))
    found: list[str] = page.evaluate(
        "async () => (await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}}))"
        ".violations.map(v => v.id + ': ' + v.help)")
    return found
