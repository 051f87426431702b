"""The dashboard, end to end in headless Chromium (Debian's chromium + chromium-driver): search,
a traceback, a bulk retry, live updates that keep a half-typed filter, CSRF refusal, and a
read-only key that sees no buttons.

With JOBQ_DOCS_SCREENSHOTS=1 the tests also write docs/dashboard*.png.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.browser import chromium, screenshot, text_of
from tests.helpers import READ_KEY, SUBMIT_KEY, serve, wait_for


def _finished(api: str, ids: list[str], status: str) -> bool:
    return all(httpx.get(f"{api}/jobs/{i}").json()["status"] == status for i in ids)


def _submit(api: str, task: str, n: int = 1, **body: Any) -> list[str]:
    return [httpx.post(f"{api}/jobs", json={"task": task, **body}).json()["id"] for _ in range(n)]


def test_search_detail_traceback_and_bulk_retry(
    browser: Any, live_api: str, worker_factory: Any, tmp_path: Path
) -> None:
    worker_factory()
    ok = _submit(live_api, "echo", 3, payload={"hello": "dash"})
    bad = _submit(live_api, "permanent", 4)
    keyed = _submit(live_api, "echo", payload={"k": 1}, idempotency_key="order-4711")[0]
    wait_for(lambda: _finished(live_api, [*ok, keyed], "succeeded"), what="echo jobs")
    wait_for(lambda: _finished(live_api, bad, "failed"), what="permanent jobs to fail")

    browser.get(f"{live_api}/dashboard")
    assert browser.find_element("id", "count-succeeded").text == "4"
    assert browser.find_element("id", "count-failed").text == "4"
    assert "can never work" in browser.find_element("id", "failures").text
    assert browser.find_elements("css selector", "#chart-minute svg rect")  # bars drawn

    # Search by typing into the form: the filters land in the URL.
    browser.get(f"{live_api}/dashboard/jobs")
    browser.find_element("name", "task").send_keys("permanent")
    browser.find_element("name", "error").send_keys("NEVER")  # case-insensitive substring
    browser.find_element("id", "filter").click()
    wait_for(lambda: "task=permanent" in browser.current_url, what="the search in the URL")
    assert "error=NEVER" in browser.current_url
    rows = browser.find_elements("css selector", "#jobs tr[data-job]")
    assert sorted(r.get_attribute("data-job") for r in rows) == sorted(bad)
    browser.get(f"{live_api}/dashboard/jobs?idempotency_key=order-4711")
    rows = browser.find_elements("css selector", "#jobs tr[data-job]")
    assert [r.get_attribute("data-job") for r in rows] == [keyed]
    browser.get(f"{live_api}/dashboard/jobs?id={ok[0]}")
    assert [
        r.get_attribute("data-job")
        for r in browser.find_elements("css selector", "#jobs tr[data-job]")
    ] == [ok[0]]

    # A failed job's detail: every attempt, with its traceback behind a click.
    browser.get(f"{live_api}/dashboard/jobs/{bad[0]}")
    assert "failed" in browser.find_element("id", "status").text
    browser.find_element("css selector", "details.traceback summary").click()
    traceback = browser.find_element("css selector", "details.traceback pre").text
    assert "Traceback (most recent call last)" in traceback and "PermanentError" in traceback
    assert browser.find_element("id", "wait").text  # a queue wait is shown
    screenshot(browser, tmp_path, "dashboard-job")

    # Bulk retry of everything the search matches: count, confirmation, then it happens.
    browser.get(f"{live_api}/dashboard/jobs?task=permanent&status=failed")
    screenshot(browser, tmp_path, "dashboard-search")
    button = browser.find_element("id", "bulk-retry")
    assert button.text == "Retry 4"
    button.click()
    wait_for(lambda: text_of(browser, "#confirm-count") == "4", what="the confirmation")
    screenshot(browser, tmp_path, "dashboard-bulk-confirm")
    browser.find_element("id", "confirm-button").click()
    wait_for(lambda: "retry: 4 of 4" in text_of(browser, "#message"), what="the bulk result")

    def all_ran_again() -> bool:
        return all(len(httpx.get(f"{live_api}/jobs/{i}/attempts").json()) == 2 for i in bad)

    wait_for(all_ran_again, what="every retried job to run again")
    # The echo jobs were not touched.
    assert all(len(httpx.get(f"{live_api}/jobs/{i}/attempts").json()) == 1 for i in ok)


def test_live_updates_keep_a_half_typed_filter(browser: Any, live_api: str) -> None:
    browser.get(f"{live_api}/dashboard/jobs")
    field = browser.find_element("name", "task")
    field.send_keys("half-typ")
    first = _submit(live_api, "echo")[0]
    # The list refreshes itself (htmx) and shows the new job; the page was not reloaded.
    wait_for(
        # Read in the page, in one step: htmx may swap the element between a find and a read.
        lambda: (
            first
            in browser.execute_script("return document.getElementById('jobs')?.innerHTML || ''")
        ),
        what="the live list to show the new job",
        timeout=20,
    )
    assert browser.find_element("name", "task").get_attribute("value") == "half-typ"
    assert browser.current_url.endswith("/dashboard/jobs")


def test_workers_queues_scheduled_and_charts_pages(
    browser: Any, live_api: str, worker_factory: Any, db: Any, tmp_path: Path
) -> None:
    worker = worker_factory(worker_presence_seconds=0.5)
    with db.cursor() as cur:  # a worker that stopped heartbeating long ago
        cur.execute(
            """INSERT INTO workers (id, host, version, concurrency, interval_seconds,
                                    started_at, last_seen_at)
               VALUES ('gone:1:abc', 'gone', '0.0.9', 4, 10, now() - interval '2 hours',
                       now() - interval '1 hour')"""
        )
    _submit(live_api, "echo", 3)
    _submit(live_api, "permanent")
    browser.get(f"{live_api}/dashboard/workers")
    wait_for(lambda: worker.worker_id in text_of(browser, "#workers"), what="the live worker row")
    rows = {
        r.get_attribute("data-worker"): r.text
        for r in browser.find_elements("css selector", "#workers tr[data-worker]")
    }
    assert "live" in rows[worker.worker_id] and "dead" in rows["gone:1:abc"]
    screenshot(browser, tmp_path, "dashboard-workers")

    browser.get(f"{live_api}/dashboard/queues")
    assert browser.find_elements("css selector", "#queues tr[data-queue='default']")
    screenshot(browser, tmp_path, "dashboard-queues")

    far = _submit(live_api, "echo", run_at="2099-01-01T00:00:00Z")[0]
    browser.get(f"{live_api}/dashboard/scheduled")
    browser.find_element("css selector", f"button.run-now[data-job='{far}']").click()
    wait_for(lambda: "due now" in text_of(browser, "#message"), what="run now")
    wait_for(lambda: _finished(live_api, [far], "succeeded"), what="the scheduled job to run")

    browser.get(f"{live_api}/dashboard/charts")
    wait_for(lambda: "echo" in text_of(browser, "#latency"), what="per-task percentiles")


def test_cross_origin_form_post_is_refused(
    browser: Any, live_api: str, worker_factory: Any
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    worker_factory()
    bad = _submit(live_api, "permanent")[0]
    wait_for(lambda: _finished(live_api, [bad], "failed"), what="the job to fail")
    browser.get(f"{live_api}/dashboard/jobs/{bad}")  # the victim has the dashboard open
    token = browser.find_element("name", "csrf_token").get_attribute("value")

    # Another site (another origin: another port) posts the retry form, even with a token.
    evil = (
        f'<form id="f" method="post" action="{live_api}/dashboard/jobs/{bad}/retry">'
        f'<input name="csrf_token" value="{token}"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    attacker = Starlette(routes=[Route("/", lambda request: HTMLResponse(evil))])
    with serve(attacker) as evil_url:
        browser.get(evil_url)
        wait_for(lambda: "forbidden" in text_of(browser), what="the refusal")
    assert "cross-origin" in text_of(browser)
    assert len(httpx.get(f"{live_api}/jobs/{bad}/attempts").json()) == 1  # not retried
    assert httpx.get(f"{live_api}/jobs/{bad}").json()["status"] == "failed"


def test_csrf_rules_without_a_browser(api: Any) -> None:
    job = api.post("/jobs", json={"task": "echo", "run_at": "2099-01-01T00:00:00Z"}).json()
    api.get("/dashboard/scheduled")  # sets the token cookie
    token = api.cookies.get("jobq_csrf")
    url = f"/dashboard/jobs/{job['id']}/cancel"
    same = {"Origin": "http://testserver"}
    assert api.post(url, data={"csrf_token": token}).status_code == 403  # no Origin
    assert (
        api.post(url, data={"csrf_token": token}, headers={"Origin": "http://evil"}).status_code
        == 403
    )
    assert api.post(url, data={"csrf_token": "x" * 43}, headers=same).status_code == 403
    assert api.post(url, data={}, headers=same).status_code == 403
    referer = {"Referer": "http://testserver/dashboard/scheduled"}  # no Origin: the Referer
    done = api.post(url, data={"csrf_token": token}, headers=referer, follow_redirects=False)
    assert done.status_code == 303 and "cancel+requested" in done.headers["location"]
    assert api.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
    bulk = api.post("/dashboard/bulk", data={"action": "retry"}, headers=same)
    assert bulk.status_code == 403


@pytest.fixture
def secured_api(settings: Any) -> Iterator[str]:
    from app.api.app import create_app

    keys = f"ops:submit:{SUBMIT_KEY},viewer:read:{READ_KEY}"
    with serve(
        create_app(settings.model_copy(update={"auth": "required", "api_keys": keys}))
    ) as url:
        yield url


def test_read_only_key_sees_no_buttons_and_gets_403(
    browser: Any, secured_api: str, worker_factory: Any, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {SUBMIT_KEY}"}
    worker_factory()
    bad = httpx.post(f"{secured_api}/jobs", json={"task": "permanent"}, headers=auth).json()["id"]
    wait_for(
        lambda: httpx.get(f"{secured_api}/jobs/{bad}", headers=auth).json()["status"] == "failed",
        what="the job to fail",
    )
    host = secured_api.removeprefix("http://")
    browser.get(f"http://viewer:{READ_KEY}@{host}/dashboard/jobs/{bad}")
    assert "read-only" in text_of(browser, "header")
    assert not browser.find_elements("css selector", "button")
    browser.get(f"http://{host}/dashboard/jobs?status=failed")
    assert bad in (browser.find_element("id", "jobs").get_attribute("innerHTML") or "")
    assert not browser.find_elements("id", "bulk")
    browser.get(f"http://{host}/dashboard")
    assert not browser.find_elements("css selector", "button.retry")

    basic = base64.b64encode(f"viewer:{READ_KEY}".encode()).decode()
    origin = {"Origin": secured_api}
    for path in (f"/dashboard/jobs/{bad}/retry", "/dashboard/bulk"):
        refused = httpx.post(
            f"{secured_api}{path}", headers={"Authorization": f"Basic {basic}", **origin}
        )
        assert refused.status_code == 403 and "read-only" in refused.text
    # The submit key does see them.
    with chromium() as other:
        other.get(f"http://ops:{SUBMIT_KEY}@{host}/dashboard/jobs/{bad}")
        assert other.find_elements("css selector", "button.retry")


def test_dashboard_escapes_hostile_payloads_and_bounds_pages(api: Any) -> None:
    job = api.post("/jobs", json={"task": "echo", "payload": {"x": "<script>alert(1)</script>"}})
    page = api.get(f"/dashboard/jobs/{job.json()['id']}").text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert api.get("/dashboard/jobs?status=bogus&task=%27%22").status_code == 200
    assert "status" in api.get("/dashboard/jobs?status=bogus").text  # the field is named
    assert "created_after" in api.get("/dashboard/jobs?created_after=yesterday").text
    with api.app.state.runtime.sessions.begin() as session:  # a 1 MB traceback (old rows)
        session.execute(
            text(
                "INSERT INTO job_attempts (job_id, attempt, outcome, traceback) "
                "VALUES (:id, 1, 'failed', repeat('t', 1000000))"
            ),
            {"id": job.json()["id"]},
        )
    detail = api.get(f"/dashboard/jobs/{job.json()['id']}")
    assert detail.status_code == 200 and len(detail.content) < 100_000  # cut at 64 KiB
    big = "e" * 60_000
    for _ in range(60):
        api.post("/jobs", json={"task": "echo", "payload": {"big": big}})
    listing = api.get("/dashboard/jobs")
    assert listing.status_code == 200 and len(listing.content) < 200_000  # 50 rows, fields cut


SEED = """
INSERT INTO jobs (id, task, status, payload, max_attempts, attempts, priority, error,
                  created_at, started_at, finished_at, updated_at)
SELECT gen_random_uuid(), t.task,
       CASE WHEN g % t.fail_every = 0 THEN 'failed' ELSE 'succeeded' END, '{}', 3, 1,
       (ARRAY['high', 'default', 'low'])[1 + g % 3],
       CASE WHEN g % t.fail_every = 0 THEN t.error END,
       at - make_interval(secs => t.wait * (1 + g % 5) + t.run), at - make_interval(secs => t.run),
       at, at
FROM (VALUES ('send_email', 7, 0.2, 0.9, 'SMTPServerDisconnected: Connection unexpectedly closed'),
             ('resize_image', 23, 1.5, 4.0, 'PIL.UnidentifiedImageError: cannot identify image'),
             ('sync_crm', 11, 0.05, 12.0, 'httpx.ReadTimeout: timed out after 10 s'))
         AS t(task, fail_every, wait, run, error),
     generate_series(1, 400) AS g,
     LATERAL (SELECT now() - make_interval(secs => (g * 211 % 1320) * 60 * (1 + g % 2)
                                                   / (1 + 23 * (g % 2))) AS at) AS a;
INSERT INTO job_attempts (job_id, attempt, outcome, error, started_at, finished_at)
SELECT id, 1, status, error, started_at - make_interval(secs => random() * 2),
       finished_at FROM jobs WHERE task IN ('send_email', 'resize_image', 'sync_crm');
UPDATE jobs SET dead_lettered_at = finished_at, attempts = 3
WHERE status = 'failed' AND task = 'resize_image';
INSERT INTO jobs (id, task, status, payload, max_attempts, created_at)
VALUES ('00000000-0000-0000-0000-000000000001', 'exact', 'succeeded', '{}', 3,
        now() - interval '5 min');
INSERT INTO job_attempts (job_id, attempt, outcome, started_at, finished_at)
SELECT '00000000-0000-0000-0000-000000000001', g, 'succeeded',
       now() - interval '60 s' - make_interval(secs => g / 1000.0), now() - interval '60 s'
FROM generate_series(1, 100) AS g;
"""


def test_charts_from_a_busy_day(
    browser: Any, live_api: str, runtime: Any, db: Any, tmp_path: Path
) -> None:
    from app.observability import charts

    with db.cursor() as cur:
        cur.execute(SEED)
    _submit(live_api, "echo", 5)  # a backlog: no worker runs
    with runtime.sessions() as session:
        minutes = charts.throughput(session, "minute")
        hours = charts.throughput(session, "hour")
        per_task = {t["task"]: t for t in charts.latency(session, hours=24)}
    assert len(minutes) == 60 and len(hours) == 24
    assert sum(p["ok"] + p["failed"] for p in hours) == 1300  # every seeded attempt
    assert sum(p["failed"] for p in hours) == 400 // 7 + 400 // 23 + 400 // 11
    assert sum(1 for p in hours if p["ok"]) > 12  # spread over the day
    # 100 runs of 1..100 ms: percentile_cont's p50 and p95 exactly.
    assert per_task["exact"]["attempts"] == 100
    assert per_task["exact"]["run_p50"] == pytest.approx(0.0505)
    assert per_task["exact"]["run_p95"] == pytest.approx(0.09505)
    assert per_task["sync_crm"]["wait_p50"] == pytest.approx(0.15, abs=0.01)  # 0.05 x 1..5

    browser.get(f"{live_api}/dashboard")
    assert len(browser.find_elements("css selector", "#chart-hour svg rect")) > 20
    screenshot(browser, tmp_path, "dashboard")
    browser.get(f"{live_api}/dashboard/charts?hours=24")
    assert "resize_image" in text_of(browser, "#latency")
    screenshot(browser, tmp_path, "dashboard-charts")
    browser.get(f"{live_api}/dashboard/dlq")
    rows = browser.find_elements("css selector", "#jobs tr[data-job]")
    assert len(rows) == 400 // 23 and all("resize_image" in r.text for r in rows)
    assert browser.find_element("id", "bulk-redrive").text == f"Redrive from DLQ {400 // 23}"
    screenshot(browser, tmp_path, "dashboard-dlq")
