"""The HTML report in a real headless browser: renders offline with its images, no errors, the table sorts.

Needs the Debian ``chromium`` package and the ``playwright`` Python package (its own browser downloads are
never used); skipped when either is missing. Leaves a full-page screenshot in ``test-artifacts/report.png``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_html import scanned_report  # noqa: F401 - the session fixture shared with test_html.py

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SCREENSHOT = REPO / "test-artifacts" / "report.png"


def chromium() -> str | None:
    for cand in (os.environ.get("DEEPSCAN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if cand and Path(cand).is_file():
            return cand
    return None


def test_report_in_a_browser(scanned_report):  # noqa: F811 - the imported fixture
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    results = scanned_report["results"]
    problems, urls = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # A Content-Security-Policy violation (style or script blocked) is a console error too.
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
            page.on("request", lambda r: urls.append(r.url))
            page.goto(scanned_report["report"].as_uri(), wait_until="load")
            # Images are lazy; load them all so every one is checked and the screenshot is complete.
            page.evaluate("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; })")
            # Polled from here: wait_for_function re-evaluates a string predicate with eval inside the page when
            # its first check fails, which the report's Content-Security-Policy (rightly) blocks.
            deadline = time.monotonic() + 15
            while not page.evaluate("Array.from(document.images).every(i => i.complete)"):
                assert time.monotonic() < deadline, "images did not finish loading"
                page.wait_for_timeout(100)

            assert page.locator("#summary").is_visible()
            rows = page.locator("#videos tbody tr")
            assert rows.count() == len(results)
            assert all(rows.nth(i).is_visible() for i in range(rows.count()))
            overlay = page.locator("img.overlay").first
            overlay.scroll_into_view_if_needed()
            assert overlay.is_visible() and overlay.evaluate("i => i.naturalWidth") > 0
            broken = page.evaluate("Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")
            assert broken == []

            def column(css: str) -> list[str]:
                return page.locator(f"#videos tbody tr {css}").evaluate_all(
                    "cells => cells.map(c => c.getAttribute('data-sort'))")

            before = column("td:nth-child(3)")
            assert [float(s) for s in before] == sorted((float(s) for s in before), reverse=True)
            page.locator("#videos thead th", has_text="Score").locator("button").click()
            after = column("td:nth-child(3)")
            assert after != before and [float(s) for s in after] == sorted(float(s) for s in after)
            assert page.locator("#videos thead th", has_text="Score").get_attribute("aria-sort") == "ascending"
            page.locator("#videos thead th", has_text="Verdict").locator("button").click()
            ranks = [float(s) for s in column("td:nth-child(2)")]
            assert ranks == sorted(ranks, reverse=True)  # most suspicious verdicts first

            page.evaluate("window.scrollTo(0, 0)")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert urls and all(u.startswith("file://") for u in urls)  # nothing left the machine
