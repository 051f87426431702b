"""The dashboard's flow-control pages in headless Chromium: pause and resume a queue (the
worker stops and starts claiming), task limits, schedules with their next run and run now,
a workflow's chain and its cancel, a job's progress and dependencies, and a read-only key's
pages without buttons (the rest below the browser: tests/test_dashboard_flow_actions.py).

With JOBQ_DOCS_SCREENSHOTS=1 the browser tests also write docs/dashboard-*.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from app.api.app import create_app
from tests.browser import screenshot, text_of
from tests.helpers import READ_KEY, SUBMIT_KEY, job_statuses, serve, wait_for


def _rows(db: Any, sql: str, *args: Any) -> list[Any]:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def _deferred(reason: str) -> float:
    """jobq_jobs_deferred_total{reason} of this process's (in-process) workers."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("jobq_jobs_deferred_total", {"reason": reason}) or 0.0


def _click(browser: Any, css: str) -> None:
    browser.find_element("css selector", css).click()


def _submit(api: str, task: str, **body: Any) -> str:
    created = httpx.post(f"{api}/jobs", json={"task": task, **body})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_pause_and_resume_a_queue_from_the_page(
    browser: Any, live_api: str, worker_factory: Any, db: Any, tmp_path: Path
) -> None:
    worker_factory()
    browser.get(f"{live_api}/dashboard/queues")
    assert "running" in text_of(browser, "#paused-default")
    _click(browser, "button.pause[data-queue='default']")
    wait_for(lambda: "queue default paused" in text_of(browser, "#message"), what="the pause")
    assert _rows(db, "SELECT paused FROM flow_controls WHERE scope = 'queue'") == [(True,)]
    assert "paused" in text_of(browser, "#paused-default")

    # The worker receives the queue's jobs and puts them back without claiming them.
    before = _deferred("paused")
    held = [_submit(live_api, "echo") for _ in range(3)]
    wait_for(lambda: _deferred("paused") >= before + 3, what="the worker to leave the jobs")
    assert set(job_statuses(db, held).values()) == {"queued"}
    assert _rows(db, "SELECT count(*) FROM job_attempts")[0][0] == 0
    browser.get(f"{live_api}/dashboard/queues")
    assert (
        text_of(browser, "#queues tr[data-queue='default'][data-priority='default'] td.queued")
        == "3"
    )
    screenshot(browser, tmp_path, "dashboard-queues-paused")

    _click(browser, "button.resume[data-queue='default']")
    wait_for(lambda: "queue default resumed" in text_of(browser, "#message"), what="the resume")
    assert _rows(db, "SELECT paused FROM flow_controls WHERE scope = 'queue'") == [(False,)]
    wait_for(
        lambda: set(job_statuses(db, held).values()) == {"succeeded"},
        timeout=30,
        what="the worker to claim the jobs again",
    )


def test_task_pause_and_limits_from_the_page(browser: Any, live_api: str, db: Any) -> None:
    browser.get(f"{live_api}/dashboard/queues")
    _click(browser, "#task-controls button.pause[data-task='record']")
    wait_for(lambda: "task record paused" in text_of(browser, "#message"), what="the pause")
    row = "#task-controls tr[data-task='record']"
    conc = browser.find_element("css selector", f"{row} input[name='max_concurrency']")
    conc.send_keys("2")
    # A live refresh (it brings in a new job's count) keeps what is typed in the form.
    _submit(live_api, "echo")
    queued = "#queues tr[data-queue='default'][data-priority='default'] td.queued"
    wait_for(
        lambda: text_of(browser, queued) == "1",
        what="a live refresh",
        timeout=20,
    )
    conc = browser.find_element("css selector", f"{row} input[name='max_concurrency']")
    assert conc.get_attribute("value") == "2"
    browser.find_element("css selector", f"{row} input[name='rate_limit']").send_keys("30/minute")
    _click(browser, f"{row} button.set-limits")
    wait_for(lambda: "max concurrency 2" in text_of(browser, "#message"), what="the limits")
    assert _rows(
        db,
        "SELECT paused, max_concurrency, rate_count, rate_period FROM flow_controls "
        "WHERE scope = 'task' AND name = 'record'",
    ) == [(True, 2, 30, 60.0)]
    assert "paused" in text_of(browser, row) and "30/60s" in text_of(browser, row)
    # Nonsense is refused with the field named, and nothing changes.
    row_input = browser.find_element("css selector", f"{row} input[name='rate_limit']")
    row_input.clear()
    row_input.send_keys("lots")
    _click(browser, f"{row} button.set-limits")
    wait_for(lambda: "refused" in text_of(browser, "#message"), what="the refusal")
    assert "rate_limit" in text_of(browser, "#message")
    assert _rows(db, "SELECT rate_count FROM flow_controls WHERE name = 'record'") == [(30,)]
    assert httpx.get(f"{live_api}/tasks/record/controls").json()["effective_rate_limit"]


def test_schedules_page_shows_next_run_and_runs_now(
    browser: Any, live_api: str, worker_factory: Any, db: Any, tmp_path: Path
) -> None:
    made = httpx.post(
        f"{live_api}/schedules",
        json={"name": "hourly-echo", "task": "echo", "cron": "0 * * * *", "timezone": "Asia/Tokyo"},
    )
    assert made.status_code == 201, made.text
    httpx.post(
        f"{live_api}/schedules",
        json={"name": "every-10-min", "task": "echo", "interval_seconds": 600, "enabled": False},
    )
    browser.get(f"{live_api}/dashboard/schedules")
    row = "#schedules tr[data-schedule='hourly-echo']"
    assert "0 * * * *" in text_of(browser, row) and "Asia/Tokyo" in text_of(browser, row)
    next_run = text_of(browser, f"{row} td.next")
    assert next_run.startswith("in ") and "JST" in next_run  # relative, and on Tokyo's clock
    exact = browser.find_element("css selector", f"{row} td.next time").get_attribute("datetime")
    assert exact.startswith(made.json()["next_run_at"][:16])
    assert "never" in text_of(browser, f"{row} td.last")
    other = "#schedules tr[data-schedule='every-10-min']"
    assert "every 10 min" in text_of(browser, other) and "disabled" in text_of(browser, other)
    screenshot(browser, tmp_path, "dashboard-schedules")

    worker_factory()
    _click(browser, f"{row} button.run")
    wait_for(lambda: "submitted a job now" in text_of(browser, "#message"), what="run now")
    jobs = _rows(db, "SELECT id, status FROM jobs WHERE task = 'echo'")
    assert len(jobs) == 1
    wait_for(
        lambda: job_statuses(db, [str(jobs[0][0])])[str(jobs[0][0])] == "succeeded",
        what="the schedule's job to run",
    )
    browser.get(f"{live_api}/dashboard/schedules")
    assert "ago" in text_of(browser, f"{row} td.last")
    browser.find_element("css selector", f"{row} td.last a").click()
    wait_for(lambda: "succeeded" in text_of(browser, "#status"), what="the job's page")
    # The regular next run did not move.
    after = httpx.get(f"{live_api}/schedules/hourly-echo").json()
    assert after["next_run_at"] == made.json()["next_run_at"]

    browser.get(f"{live_api}/dashboard/schedules")
    _click(browser, f"{row} button.disable")
    wait_for(lambda: "schedule disabled" in text_of(browser, "#message"), what="disable")
    assert _rows(db, "SELECT enabled FROM schedules WHERE name = 'hourly-echo'") == [(False,)]
    _click(browser, f"{other} button.enable")
    wait_for(lambda: "schedule enabled" in text_of(browser, "#message"), what="enable")
    assert _rows(db, "SELECT enabled FROM schedules WHERE name = 'every-10-min'") == [(True,)]


def test_workflow_page_shows_the_chain_and_cancels_it(
    browser: Any, live_api: str, worker_factory: Any, db: Any, tmp_path: Path
) -> None:
    worker_factory(progress_interval_seconds=0.2)
    first = _submit(live_api, "echo", unique_key="nightly-import")
    second = _submit(live_api, "report_progress", payload={"hold": 60}, depends_on=[first])
    left = _submit(live_api, "echo", depends_on=[second])
    right = _submit(live_api, "record", depends_on=[second])
    last = _submit(live_api, "fan_in", depends_on=[left, right])
    wait_for(
        lambda: httpx.get(f"{live_api}/jobs/{second}").json()["progress"] == 0.5,
        what="the second job to run and report",
    )

    browser.get(f"{live_api}/dashboard/jobs/{last}")
    assert "waiting" in text_of(browser, "#status")
    parents = [
        r.get_attribute("data-job")
        for r in browser.find_elements("css selector", "#parents tr[data-job]")
    ]
    assert parents == [left, right]  # in depends_on order
    browser.find_element("css selector", f"#parents a[href$='{right}']").click()
    wait_for(lambda: right in browser.current_url, what="the parent's page")
    assert [
        r.get_attribute("data-job")
        for r in browser.find_elements("css selector", "#children tr[data-job]")
    ] == [last]
    browser.get(f"{live_api}/dashboard/jobs/{first}")
    assert "nightly-import" in text_of(browser, "#unique-key")
    assert "succeeded" in text_of(browser, "#status")
    assert "running" in text_of(browser, "#children")
    browser.find_element("css selector", "#workflow a").click()
    wait_for(lambda: "/dashboard/workflows/" in browser.current_url, what="the workflow page")
    assert browser.current_url.endswith(f"/dashboard/workflows/{first}")  # the root's id

    steps = browser.find_elements("css selector", "#steps .step")
    by_step = [
        [n.get_attribute("data-job") for n in s.find_elements("css selector", "a.node")]
        for s in steps
    ]
    assert by_step == [[first], [second], [left, right], [last]]
    assert "running" in text_of(browser, "#workflow-status")
    assert "50 %" in text_of(browser, f"#steps a[data-job='{second}']")
    deps = text_of(browser, f"#workflow-jobs tr[data-job='{last}'] td.deps")
    assert left[:8] in deps and right[:8] in deps
    screenshot(browser, tmp_path, "dashboard-workflow")

    browser.get(f"{live_api}/dashboard/workflows")
    assert first in (browser.find_element("id", "workflows").get_attribute("innerHTML") or "")
    browser.get(f"{live_api}/dashboard/workflows/{first}")
    _click(browser, "button.cancel-workflow")
    wait_for(lambda: "cancel requested" in text_of(browser, "#message"), what="the cancel")
    # Not started: cancelled at once; running: asked to stop, and it does.
    assert set(job_statuses(db, [left, right, last]).values()) == {"cancelled"}
    wait_for(lambda: job_statuses(db, [second])[second] == "cancelled", what="the running job")
    assert job_statuses(db, [first])[first] == "succeeded"
    browser.get(f"{live_api}/dashboard/workflows/{first}")
    assert "cancelled" in text_of(browser, "#workflow-status")
    assert not browser.find_elements("css selector", "button.cancel-workflow")


def test_job_page_shows_progress(
    browser: Any, live_api: str, worker_factory: Any, tmp_path: Path
) -> None:
    worker_factory(progress_interval_seconds=0.2)
    job = _submit(live_api, "report_progress", payload={"hold": 30})
    wait_for(
        lambda: httpx.get(f"{live_api}/jobs/{job}").json()["progress"] == 0.5,
        what="the job's progress",
    )
    browser.get(f"{live_api}/dashboard/jobs/{job}")
    assert text_of(browser, "#progress .pct") == "50 %"
    assert text_of(browser, "#progress-message") == "step 100"
    width = browser.find_element("css selector", "#progress .bar span").get_attribute("style")
    assert "50" in width
    screenshot(browser, tmp_path, "dashboard-progress")
    httpx.post(f"{live_api}/jobs/{job}/cancel")


def test_read_only_browser_sees_the_pages_without_buttons(
    browser: Any, settings: Any, db: Any
) -> None:
    keys = f"ops:submit:{SUBMIT_KEY},viewer:read:{READ_KEY}"
    app = create_app(settings.model_copy(update={"auth": "required", "api_keys": keys}))
    with serve(app) as url:
        host = url.removeprefix("http://")
        auth = {"Authorization": f"Bearer {SUBMIT_KEY}"}
        httpx.post(f"{url}/queues/default/pause", headers=auth)
        browser.get(f"http://viewer:{READ_KEY}@{host}/dashboard/queues")
        assert "paused" in text_of(browser, "#paused-default")
        assert not browser.find_elements("css selector", "main button")
        assert not browser.find_elements("css selector", "form.limits")
