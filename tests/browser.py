"""Headless Chromium for browser tests: Debian's chromium + chromium-driver through Selenium."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium(extra_flags: Sequence[str] = ()) -> Iterator[Any]:
    """A fresh-profile headless Chromium (no downloads, no background traffic), then quit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("Chromium is missing: apt-get install chromium chromium-driver (.ci/run does)")
    profile = tempfile.mkdtemp(prefix="jobq-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
        *extra_flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def text_of(driver: Any, css: str = "body") -> str:
    """An element's text; "" while it is not there (a live region being replaced), so callers
    polling with wait_for look again.

    Found and read in one script call: between a find and a read, an htmx swap can replace the
    node (stale element, or Chromium's "node does not belong to the document").
    """
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';"
    return str(driver.execute_script(script, css) or "")


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    """A full-page screenshot: into docs/ when JOBQ_DOCS_SCREENSHOTS=1, else a temporary file."""
    folder = ROOT / "docs" if os.environ.get("JOBQ_DOCS_SCREENSHOTS") == "1" else tmp_path
    height = min(2400, int(driver.execute_script("return document.body.scrollHeight")))
    clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000
