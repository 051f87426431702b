"""Flow control across processes: concurrency and rate limits, pause and resume."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import jobq
from app.config import Settings
from app.tasks.limits import Rate, parse_rate
from tests.helpers import (
    api_process,
    job_statuses,
    queue_depth,
    rows,
    start_worker_process,
    wait_for,
)


def _submit(api: Any, n: int, task: str = "record", **payload: Any) -> list[str]:
    return [
        api.post("/jobs", json={"task": task, "payload": payload}).json()["id"] for _ in range(n)
    ]


def _all(db: Any, ids: list[str], status: str) -> bool:
    return set(job_statuses(db, ids).values()) == {status} and len(job_statuses(db, ids)) == len(
        ids
    )


def _max_overlap(db: Any, ids: list[str]) -> int:
    """The most executions of these jobs ever running at the same instant (from their
    start/end rows in test_executions)."""
    row = rows(
        db,
        """SELECT max(n) FROM (
               SELECT (SELECT count(*) FROM test_executions o
                       WHERE o.job_id::text = ANY(%s) AND o.started_at <= e.started_at
                         AND coalesce(o.finished_at, 'infinity') > e.started_at) AS n
               FROM test_executions e WHERE e.job_id::text = ANY(%s)) s""",
        ids,
        ids,
    )
    return int(row[0][0] or 0)


def test_rate_limits_parse_and_refuse_nonsense() -> None:
    assert parse_rate("100/minute") == Rate(100, 60.0)
    assert parse_rate("5/s") == Rate(5, 1.0)
    assert parse_rate("10/30s") == Rate(10, 30.0)
    assert parse_rate("1000/hours") == Rate(1000, 3600.0)
    for bad in ("fast", "0/minute", "10/fortnight", "10"):
        with pytest.raises(ValueError, match="rate_limit"):
            parse_rate(bad)


def test_controls_api_validates_and_reports(api: Any) -> None:
    bad = api.patch("/tasks/record/controls", json={"rate_limit": "lots"})
    assert bad.status_code == 422 and "rate_limit" in bad.text
    assert api.patch("/tasks/record/controls", json={"max_concurrency": 0}).status_code == 422
    assert api.patch("/queues/Bad Name/controls", json={"paused": True}).status_code == 422
    nul = api.post("/tasks/bad%00name/pause")
    assert nul.status_code == 422 and nul.json()["error"]["field"] == "task"
    assert api.get(f"/tasks/{'x' * 201}/controls").status_code == 422
    limits = api.patch("/queues/media/controls", json={"max_concurrency": 3})
    assert limits.status_code == 422 and limits.json()["error"]["field"] == "max_concurrency"
    set_ = api.patch(
        "/tasks/record/controls", json={"max_concurrency": 4, "rate_limit": "6/minute"}
    )
    assert set_.status_code == 200
    assert set_.json()["effective_max_concurrency"] == 4
    assert set_.json()["effective_rate_limit"] == "6/60s"
    paused = api.post("/tasks/record/pause").json()
    assert paused["paused"] and paused["max_concurrency"] == 4  # pausing keeps the limits
    cleared = api.patch("/tasks/record/controls", json={"max_concurrency": None}).json()
    assert cleared["max_concurrency"] is None and cleared["rate_limit"] == "6/60s"
    names = [(c["scope"], c["name"]) for c in api.get("/controls").json()["controls"]]
    assert names == [("task", "record")]
    assert api.get("/tasks/echo/controls").json()["paused"] is False


def test_concurrency_limit_of_2_is_never_exceeded_by_4_worker_processes(
    api: Any, db: Any, settings: Settings, procs: Any, tmp_path: Path
) -> None:
    assert api.patch("/tasks/record/controls", json={"max_concurrency": 2}).status_code == 200
    (started,) = rows(db, "SELECT now()")[0]
    for i in range(4):
        procs.append(start_worker_process(settings, tmp_path / f"w{i}.log"))
    # All four poll before the jobs exist (on a loaded machine the first one up took them all).
    live = "SELECT count(*) FROM workers WHERE started_at >= %s AND stopped_at IS NULL"
    wait_for(lambda: rows(db, live, started)[0][0] >= 4, timeout=90, what="4 live workers")
    ids = _submit(api, 12, sleep=0.5)
    wait_for(lambda: _all(db, ids, "succeeded"), timeout=120, what="all 12 jobs to succeed")
    assert _max_overlap(db, ids) == 2
    # Held-back deliveries used no attempt and did not count as failures or crashes.
    counts = rows(db, "SELECT attempts, failures, crashes FROM jobs WHERE id::text = ANY(%s)", ids)
    assert set(counts) == {(1, 0, 0)}
    assert len(rows(db, "SELECT 1 FROM test_executions WHERE job_id::text = ANY(%s)", ids)) == 12
    workers = rows(db, "SELECT count(DISTINCT worker_id) FROM jobs WHERE id::text = ANY(%s)", ids)
    assert workers[0][0] >= 2  # the limit held across processes, not inside one


def test_rate_limit_spaces_starts_across_two_workers(
    api: Any, db: Any, worker_factory: Any
) -> None:
    # 2 per 2 s: a full bucket lets 2 start at once, then one a second.
    assert api.patch("/tasks/record/controls", json={"rate_limit": "2/2s"}).status_code == 200
    ids = _submit(api, 5)
    worker_factory()
    worker_factory()
    wait_for(lambda: _all(db, ids, "succeeded"), timeout=60, what="all 5 jobs to succeed")
    starts = sorted(
        r[0]
        for r in rows(
            db, "SELECT started_at FROM test_executions WHERE job_id::text = ANY(%s)", ids
        )
    )
    # Tokens refill at 1/s: the 5th start is at least 3 s after the first.
    assert (starts[-1] - starts[0]).total_seconds() >= 2.9
    assert set(rows(db, "SELECT attempts FROM jobs WHERE id::text = ANY(%s)", ids)) == {(1,)}


def test_two_messages_of_a_rate_limited_job_in_one_receive_cost_no_attempt(
    api: Any, db: Any, settings: Settings, runtime: Any, worker_factory: Any
) -> None:
    # One token: had the first copy been admitted and the second held back, the job's claim
    # would have had no message left to run it (attempt 1 lost, run again after its lease).
    assert api.patch("/tasks/record/controls", json={"rate_limit": "1/10s"}).status_code == 200
    (job,) = _submit(api, 1)
    for _ in range(2):  # what a dispatcher re-publish racing the first send leaves behind
        runtime.sqs.client.send_message(
            QueueUrl=settings.sqs_queue_url, MessageBody=f'{{"job_id": "{job}"}}'
        )
    worker_factory()
    wait_for(lambda: _all(db, [job], "succeeded"), timeout=60, what="the job to succeed")
    assert rows(db, "SELECT attempts, crashes FROM jobs WHERE id = %s", job) == [(1, 0)]
    assert len(rows(db, "SELECT 1 FROM test_executions WHERE job_id::text = %s", job)) == 1


def _deferred(reason: str) -> float:
    """jobq_jobs_deferred_total{reason} of this process's workers."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("jobq_jobs_deferred_total", {"reason": reason}) or 0.0


def test_paused_task_is_untouched_by_two_workers_until_resumed(
    db: Any, settings: Settings, runtime: Any, procs: Any, tmp_path: Path
) -> None:
    import httpx

    with (
        api_process(settings, tmp_path / "a1.log") as (one, _),
        api_process(settings, tmp_path / "a2.log") as (two, _),
    ):
        # Paused through one API process, submitted and resumed through the other.
        assert httpx.post(f"{one}/tasks/record/pause").json()["paused"] is True
        api = httpx.Client(base_url=two)
        held = _submit(api, 4)
        for i in range(2):
            procs.append(start_worker_process(settings, tmp_path / f"w{i}.log"))
        # Other tasks keep running meanwhile...
        other = _submit(api, 2, task="echo")
        wait_for(lambda: _all(db, other, "succeeded"), timeout=60, what="echo jobs to run")
        # ...and the paused ones were received and put back as delayed fresh messages.
        wait_for(
            lambda: queue_depth(runtime.sqs, settings.sqs_queue_url)["delayed"] >= 4,
            timeout=30,
            what="the workers to defer the paused jobs",
        )
        assert _all(db, held, "queued")
        assert rows(db, "SELECT count(*) FROM test_executions")[0][0] == 0
        resumed_at = datetime.now(UTC)
        began = time.monotonic()
        assert api.post("/tasks/record/resume").json()["paused"] is False
        wait_for(lambda: _all(db, held, "succeeded"), timeout=30, what="resumed jobs to run")
        took = time.monotonic() - began
    starts = rows(db, "SELECT min(started_at) FROM test_executions")[0][0]
    assert starts >= resumed_at
    # The recheck delay (JOBQ_PAUSE_RECHECK_SECONDS, 5 s) bounds how long a resume takes.
    assert took < settings.pause_recheck_seconds + 5
    counts = rows(db, "SELECT attempts, redeliveries FROM jobs WHERE id::text = ANY(%s)", held)
    assert set(counts) == {(1, 0)}


def test_paused_queue_holds_its_jobs_and_resume_releases_them(
    api: Any, db: Any, worker_factory: Any
) -> None:
    api.post("/queues/default/pause")
    before = _deferred("paused")
    held = _submit(api, 3, task="echo")
    worker_factory()
    wait_for(lambda: _deferred("paused") >= before + 3, what="the worker to defer the jobs")
    assert _all(db, held, "queued")
    api.post("/queues/default/resume")
    wait_for(lambda: _all(db, held, "succeeded"), timeout=30, what="the queue's jobs to run")


def test_async_client_pauses_limits_and_lists(live_api: str) -> None:
    asyncio.run(_pause_limit_and_list(live_api))


async def _pause_limit_and_list(live_api: str) -> None:
    async with jobq.AsyncClient(live_api) as client:
        paused = await client.pause(task="record")
        assert paused.paused and paused.scope == "task"
        limited = await client.set_limits("record", max_concurrency=3)
        assert limited.effective_max_concurrency == 3 and limited.paused
        rated = await client.set_limits("record", rate_limit="5/minute")
        assert rated.max_concurrency == 3 and rated.rate_limit == "5/60s"  # the other kept
        cleared = await client.set_limits("record", max_concurrency=None)
        assert cleared.max_concurrency is None and cleared.rate_limit == "5/60s"
        assert (await client.resume(task="record")).paused is False
        assert (await client.pause(queue="default")).scope == "queue"
        names = {(c.scope, c.name) for c in await client.list_controls()}
        assert names == {("task", "record"), ("queue", "default")}
        with pytest.raises(jobq.InvalidInput):
            await client.set_limits("record", rate_limit="often")
        with pytest.raises(TypeError):
            await client.pause()
