"""Fault drills, worker and job side: SIGTERM during a non-cooperative job, a worker paused
past its lease, a poison job, odd results, a duplicate during a retrying attempt, a retry
storm and a high-priority burst. Each reports through tests/drills.py."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.sqs.queue import ensure_queues, make_sqs_client
from tests import drills
from tests.conftest import make_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.drill
JOBS = drills.size(40, 600)
FAST = {"visibility_timeout_seconds": 5, "heartbeat_seconds": 1.0}


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    """Start worker processes; all are killed at teardown."""
    yield from drills.worker_processes(tmp_path)


def _runs_on(db: Any, pid: int) -> int:
    return drills.count(db, "SELECT count(*) FROM test_executions WHERE pid = %s", pid)


def _first_start_elsewhere(db: Any, ids: set[str], pid: int) -> datetime | None:
    with db.cursor() as cur:
        cur.execute(
            "SELECT min(started_at) FROM test_executions WHERE job_id = ANY(%s::uuid[])"
            " AND pid <> %s",
            (list(ids), pid),
        )
        value: datetime | None = cur.fetchone()[0]
        return value


def test_drill_sigterm_during_a_long_non_cooperative_job_with_another_worker_idle(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **FAST, shutdown_grace_seconds=3)
    a = workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        stuck = {drills.submit(api, {"task": "stubborn", "payload": {"seconds": 12}})}
        wait_for(lambda: _runs_on(db, a.pid) == 1, timeout=60, what="the run on A")
        workers(settings)  # B, idle
        term = time.monotonic()
        a.send_signal(signal.SIGTERM)
        assert a.wait(20) == 0
        exited_at, took = datetime.now(UTC), time.monotonic() - term
        wait_for(lambda: drills.all_final(db, stuck), timeout=60, what="B to run it")
        elsewhere = _first_start_elsewhere(db, stuck, a.pid)
        result = drills.report(db, "SIGTERM during a 12 s non-cooperative job", stuck, started)
    assert took < 3 + 2  # within the grace (slack for a loaded machine)
    # B started only after A's process (and the handler with it) was gone.
    assert elsewhere is not None and elsewhere > exited_at
    result.assert_safe(duplicates=1)  # the interrupted run is run again


def test_drill_a_worker_paused_past_its_lease_then_continued(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    # lease 5 s, margin 1.25 s: paused 9 s, A's lease ran out and B took the job over.
    settings = make_settings(database_url, sqs_endpoint, **FAST)
    a = workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        # 8 s: longer than A's lease plus the pause, and B's run is short.
        job = drills.submit(api, {"task": "cooperative", "payload": {"seconds": 8}})
        wait_for(lambda: _runs_on(db, a.pid) == 1, timeout=60, what="the run on A")
        workers(settings)  # B
        a.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: _first_start_elsewhere(db, {job}, a.pid),
                timeout=30,
                what="B to take the job over",
            )
            time.sleep(1)  # the pause itself goes on a little after the takeover
        finally:
            a.send_signal(signal.SIGCONT)
        resumed = datetime.now(UTC)
        # On resuming, A's handler sees ctx.cancelled (lease_lost) and returns at once.
        wait_for(
            lambda: drills.count(
                db,
                "SELECT count(*) FROM test_executions WHERE pid = %s AND finished_at IS NOT NULL",
                a.pid,
            ),
            timeout=10,
            what="A's handler to stop",
        )
        with db.cursor() as cur:
            cur.execute("SELECT finished_at FROM test_executions WHERE pid = %s", (a.pid,))
            a_end = cur.fetchone()[0]
        wait_for(lambda: drills.all_final(db, {job}), timeout=60, what="B to finish")
        result = drills.report(
            db, "a worker SIGSTOPped past its lease, then SIGCONT", {job}, started
        )
    # The runs overlap only while A was frozen (it did nothing) and the moment it needs to
    # see its cancellation: the watchdog's tick and the handler's check.
    assert (a_end - resumed).total_seconds() < 1.5
    assert result.succeeded == 1 and result.lost == 0 and result.concurrent_attempts == 0
    with db.cursor() as cur:
        cur.execute("SELECT result->>'pid' FROM jobs WHERE id = %s", (job,))
        assert cur.fetchone()[0] != str(a.pid)  # A's late result was refused


def test_drill_a_poison_job_among_ordinary_ones(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=8)
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        poison = drills.submit(api, {"task": "record", "payload": {"crash_attempts": 99}})
        accepted = drills.submit_batch(api, JOBS, sleep=0.5) | {poison}
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
        result = drills.report(db, "a poison job (os._exit) among ordinary jobs", accepted, started)
        assert api.get(f"/jobs/{poison}").json()["status"] == "failed"
    # The poison job failed after it ran (its effect rows); every ordinary job succeeded.
    result.assert_safe(failed=1, duplicates=None)


def test_drill_odd_results_among_ordinary_jobs(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=16)
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    kinds = ["nan", "inf", "nul", "surrogate", "deep", "raise_nul", "raise_badstr", "set"]
    with TestClient(create_app(settings)) as api:
        odd = {drills.submit(api, {"task": "odd", "payload": {"kind": k}}) for k in kinds}
        ordinary = drills.submit_batch(api, JOBS, sleep=0.02)
        wait_for(lambda: drills.all_final(db, ordinary | odd), timeout=120 + JOBS, interval=0.3)
        result = drills.report(db, "odd results (NaN, NUL, deep nesting) beside", ordinary, started)
        errors = [api.get(f"/jobs/{j}").json()["error"] for j in odd]
    assert all(errors), errors  # each odd job says why
    result.assert_safe()


def test_drill_a_duplicate_message_during_a_long_retrying_attempt(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(
        database_url, sqs_endpoint, **FAST, backoff_base_seconds=6, backoff_cap_seconds=6
    )
    for _ in range(2):
        workers(settings)
    client = make_sqs_client(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        # Attempt 1 fails after 6 s (then a 6 s backoff), attempt 2 succeeds.
        jobs = {
            drills.submit(api, {"task": "record", "payload": {"sleep": 6, "fail_attempts": 1}})
            for _ in range(3)
        }
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM test_executions") == 3,
            timeout=60,
            what="the first attempts",
        )
        for job in jobs:  # the dispatcher's re-send after an SQS outage does this
            for _ in range(2):
                client.send_message(
                    QueueUrl=settings.sqs_queue_url, MessageBody=f'{{"job_id": "{job}"}}'
                )
        wait_for(lambda: drills.all_final(db, jobs), timeout=90, interval=0.3)
        result = drills.report(
            db, "duplicate messages during long retrying attempts", jobs, started
        )
    result.assert_safe(duplicates=3)  # exactly the retries: attempt 2 of each
    assert drills.count(db, "SELECT count(*) FROM test_executions") == 6


def test_drill_a_retry_storm(database_url: str, sqs_endpoint: str, db: Any, workers: Any) -> None:
    # Every job fails twice and succeeds on its third (last) attempt.
    settings = make_settings(database_url, sqs_endpoint, **FAST, backoff_base_seconds=0.2)
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS, sleep=0.02, payload={"fail_attempts": 2})
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
        result = drills.report(db, "retry storm (every job fails twice)", accepted, started)
    result.assert_safe(duplicates=2 * JOBS)
    assert result.duplicate_executions == 2 * JOBS  # the retries, nothing more


def test_drill_a_high_priority_burst_while_low_ones_wait(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=4)
    client = make_sqs_client(settings)
    urls = {}
    for priority in ("high", "low"):
        name = f"{settings.sqs_queue_url.rsplit('/', 1)[-1]}-{priority}"
        urls[priority], _ = ensure_queues(
            client, name, f"{name}-dlq", max_receive_count=5, visibility_timeout=5
        )
    settings = settings.model_copy(
        update={"sqs_high_queue_url": urls["high"], "sqs_low_queue_url": urls["low"]}
    )
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        low = drills.submit_batch(api, JOBS // 4, sleep=0.05, priority="low")
        high = drills.submit_batch(api, JOBS * 2, sleep=0.05, priority="high")
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == 0
        )
        workers(settings, SQS_HIGH_QUEUE_URL=urls["high"], SQS_LOW_QUEUE_URL=urls["low"])
        wait_for(lambda: drills.all_final(db, low), timeout=120 + JOBS, interval=0.2)
        low_done = time.monotonic()
        wait_for(lambda: drills.all_final(db, high), timeout=120 + JOBS, interval=0.2)
        high_done = time.monotonic()
        result = drills.report(db, "high-priority burst while low ones wait", high | low, started)
    # Weighted polling (6:3:1): the low jobs are done before the burst of high ones is.
    assert low_done < high_done, (low_done - started, high_done - started)
    result.assert_safe()
