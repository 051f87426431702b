"""The dashboard, end to end in headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium
from tests.helpers import wait_for


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Selenium through Debian's chromedriver (no downloads)."""
    with chromium() as driver:
        yield driver


def _text(driver: Any) -> str:
    """The page's text; "" while the page is being replaced (a refresh or a form's reload: the
    old body is stale, or the new one not there yet), so callers polling with wait_for look
    again."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("tag name", "body").text)
    except (StaleElementReferenceException, NoSuchElementException):
        return ""


def test_dashboard_shows_jobs_and_retry_works(
    browser: Any, live_api: str, worker_factory: Any, tmp_path: Path
) -> None:
    import httpx

    worker_factory()
    ok = httpx.post(f"{live_api}/jobs", json={"task": "echo", "payload": {"hello": "dash"}}).json()
    bad = httpx.post(f"{live_api}/jobs", json={"task": "permanent"}).json()

    def finished() -> bool:
        states = {httpx.get(f"{live_api}/jobs/{j['id']}").json()["status"] for j in (ok, bad)}
        return states == {"succeeded", "failed"}

    wait_for(finished, what="both jobs to finish")

    browser.get(f"{live_api}/dashboard")
    assert browser.find_element("id", "count-succeeded").text == "1"
    assert browser.find_element("id", "count-failed").text == "1"
    assert "can never work" in browser.find_element("id", "failures").text
    shot = tmp_path / "dashboard.png"  # docs/dashboard.png is one of these
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    browser.get(f"{live_api}/dashboard/jobs")
    assert ok["id"] in browser.find_element("id", "jobs").text
    browser.get(f"{live_api}/dashboard/jobs/{ok['id']}")
    assert '"hello": "dash"' in _text(browser)

    # Retry the failed job from the overview: it runs again (and fails again: permanent).
    browser.get(f"{live_api}/dashboard")
    browser.find_element("css selector", f"button.retry[data-job='{bad['id']}']").click()
    wait_for(lambda: "retry requested" in _text(browser), what="the retry confirmation")
    assert bad["id"] in browser.current_url
    wait_for(
        lambda: len(httpx.get(f"{live_api}/jobs/{bad['id']}/attempts").json()) == 2,
        what="the retried job to run again",
    )
    browser.get(f"{live_api}/dashboard/jobs/{bad['id']}")
    assert len(browser.find_elements("css selector", "#attempts tr")) == 3  # header + 2


def test_dashboard_escapes_hostile_payloads(api: Any) -> None:
    job = api.post("/jobs", json={"task": "echo", "payload": {"x": "<script>alert(1)</script>"}})
    page = api.get(f"/dashboard/jobs/{job.json()['id']}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert api.get("/dashboard/jobs?status=bogus&task=%27%22").status_code == 200
