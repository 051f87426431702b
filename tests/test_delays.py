"""Delayed jobs: short delays ride on SQS, long ones wait in PostgreSQL until due."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.helpers import wait_for_status


def test_short_delay_uses_sqs_delay(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "echo", "delay_seconds": 2}).json()
    assert job["status"] == "queued" and job["run_at"]
    done = wait_for_status(api, job["id"], "succeeded")
    assert done["started_at"] >= job["run_at"]


def test_long_delay_waits_in_postgres_then_runs_when_due(
    api: Any, worker_factory: Any, db: Any
) -> None:
    run_at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    job = api.post("/jobs", json={"task": "echo", "run_at": run_at}).json()
    assert job["status"] == "scheduled"
    worker_factory()
    # Bring it forward: due in 1 s. The dispatcher publishes it, the worker runs it on time.
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET run_at = now() + interval '1 second' RETURNING run_at")
        due = cur.fetchone()[0]
    done = wait_for_status(api, job["id"], "succeeded")
    started = datetime.fromisoformat(done["started_at"])
    assert due <= started < due + timedelta(seconds=5)
