"""/docs and /redoc work offline: headless Chromium that can reach only 127.0.0.1 renders them.

Every other host is unresolvable (--host-resolver-rules) and any other connection goes to a
proxy port that refuses it, so a page that needs a CDN shows no operations at all.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import chromium
from tests.helpers import wait_for


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    """Headless Chromium cut off from every host but 127.0.0.1."""
    # Bound but never listening: every connection to it is refused at once.
    with socket.socket() as refuser:
        refuser.bind(("127.0.0.1", 0))
        flags = (
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            # Chromium sends loopback past the proxy by itself; everything else dead-ends here.
            f"--proxy-server=http://127.0.0.1:{refuser.getsockname()[1]}",
        )
        with chromium(flags) as driver:
            yield driver


def _operations(live_api: str) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> summary for every operation in the API's OpenAPI document."""
    spec = httpx.get(f"{live_api}/openapi.json").json()
    return {
        (method.upper(), path): op["summary"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }


def _swagger_operations(driver: Any) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation block Swagger UI rendered."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return {
            (
                block.find_element("css selector", ".opblock-summary-method").text.strip(),
                block.find_element("css selector", ".opblock-summary-path").text.strip(),
            )
            for block in driver.find_elements("css selector", ".opblock")
        }
    except StaleElementReferenceException:
        return set()  # re-rendering; the caller polls again


def _body_text(driver: Any) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("tag name", "body").text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def test_the_browser_really_cannot_reach_the_internet(offline_browser: Any) -> None:
    """The premise of the two tests below: a CDN asset does not load in this browser."""
    from selenium.common.exceptions import WebDriverException

    try:
        offline_browser.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js")
    except WebDriverException as exc:  # chromedriver reports the failed navigation itself
        assert "net::ERR_" in str(exc.msg)
    else:
        text = _body_text(offline_browser)
        assert "SwaggerUIBundle" not in text
        assert re.search(r"ERR_NAME_NOT_RESOLVED|ERR_PROXY|can.t be reached", text), text


def test_docs_lists_every_operation_offline(offline_browser: Any, live_api: str) -> None:
    expected = set(_operations(live_api))
    assert ("POST", "/jobs") in expected
    html = httpx.get(f"{live_api}/docs").text
    assert not re.search(r"""(src|href)=["']https?://""", html), "docs page loads remote assets"
    offline_browser.get(f"{live_api}/docs")
    shown = wait_for(
        lambda: (ops := _swagger_operations(offline_browser)) >= expected and ops,
        timeout=30,
        what="Swagger UI to list every operation",
    )
    assert shown == expected


def test_redoc_lists_every_operation_offline(offline_browser: Any, live_api: str) -> None:
    summaries = set(_operations(live_api).values())
    html = httpx.get(f"{live_api}/redoc").text
    assert not re.search(r"""(src|href)=["']https?://""", html), "redoc page loads remote assets"
    offline_browser.get(f"{live_api}/redoc")
    text = wait_for(
        lambda: (t := _body_text(offline_browser)) and all(s in t for s in summaries) and t,
        timeout=30,
        what="ReDoc to render every operation",
    )
    assert "Submit Job" in text and "/jobs/{job_id}/retry" in text


def test_dashboard_scripts_load_offline(offline_browser: Any, live_api: str) -> None:
    """The dashboard's only script (htmx) comes from the package: it runs with no internet."""
    offline_browser.get(f"{live_api}/dashboard/jobs")
    wait_for(
        lambda: offline_browser.execute_script("return typeof window.htmx") == "object",
        what="htmx to load from the API",
    )
    scripts = offline_browser.execute_script("return Array.from(document.scripts).map(s => s.src)")
    assert scripts and all(s.startswith(live_api) for s in scripts), scripts
