"""Worker semantics against real PostgreSQL and the SQS server (in-process workers)."""

from __future__ import annotations

import uuid
from typing import Any

from app.sqs.queue import Outgoing
from tests.helpers import queue_is_empty, rows, wait_for, wait_for_status


def _job(api: Any, job_id: str) -> dict[str, Any]:
    return api.get(f"/jobs/{job_id}").json()


def _executions(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return rows(
        db,
        "SELECT attempt, started_at, finished_at FROM test_executions WHERE job_id = %s"
        " ORDER BY id",
        job_id,
    )


def test_echo_succeeds_and_message_is_deleted(api: Any, worker_factory: Any, runtime: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "echo", "payload": {"x": 1}}).json()
    done = wait_for_status(api, job["id"], "succeeded")
    assert done["result"] == {"x": 1} and done["attempts"] == 1 and done["error"] is None
    assert done["started_at"] and done["finished_at"] >= done["started_at"]
    wait_for(lambda: queue_is_empty(runtime.sqs), what="message deleted")
    attempts = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "succeeded")]


def test_flaky_retries_then_succeeds_with_error_history(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "flaky", "payload": {"failures": 2}}).json()
    done = wait_for_status(api, job["id"], "succeeded", "failed")
    assert done["status"] == "succeeded" and done["attempts"] == 3
    assert done["result"] == {"attempt": 3}
    history = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [h["outcome"] for h in history] == ["failed", "failed", "succeeded"]
    assert [h["error"] for h in history[:2]] == ["flaky failure 1 of 2", "flaky failure 2 of 2"]
    assert all(h["finished_at"] for h in history)


def test_fail_ends_failed_and_dead_lettered(
    api: Any, worker_factory: Any, db: Any, runtime: Any
) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "fail", "payload": {"message": "boom"}}).json()
    done = wait_for_status(api, job["id"], "failed")
    assert done["attempts"] == 3 and "boom" in done["error"]
    history = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [h["outcome"] for h in history] == ["failed"] * 3

    def dead_lettered() -> bool:
        with db.cursor() as cur:
            cur.execute("SELECT dead_lettered_at FROM jobs WHERE id = %s", (job["id"],))
            return cur.fetchone()[0] is not None

    # Attempts used up: failed and dead-lettered by jobq at once; its message is deleted (the
    # SQS DLQ is only for messages that keep crashing workers).
    assert dead_lettered() and done["failures"] == 3
    wait_for(lambda: queue_is_empty(runtime.sqs), what="main queue drained")
    assert queue_is_empty(runtime.sqs, runtime.sqs.dlq_url)


def test_permanent_error_fails_at_once(api: Any, worker_factory: Any, runtime: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "permanent"}).json()
    done = wait_for_status(api, job["id"], "failed")
    assert done["attempts"] == 1 and "can never work" in done["error"]
    wait_for(lambda: queue_is_empty(runtime.sqs), what="message deleted")


def test_timeout_is_a_retryable_failure(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "hang"}).json()
    done = wait_for_status(api, job["id"], "failed", timeout=60)
    history = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [h["outcome"] for h in history] == ["timed_out"] * 3
    assert "timed out after 1 s" in done["error"]


def test_duplicate_delivery_runs_handler_once(
    api: Any, worker_factory: Any, runtime: Any, db: Any
) -> None:
    job = api.post("/jobs", json={"task": "record", "payload": {"sleep": 0.5}}).json()
    job_id = uuid.UUID(job["id"])
    # Two more copies of the same job id on the queue, before any worker runs.
    runtime.sqs.send_batch([Outgoing(job_id), Outgoing(job_id)])
    worker_factory()
    worker_factory()
    wait_for_status(api, job["id"], "succeeded")
    wait_for(lambda: queue_is_empty(runtime.sqs), timeout=40, what="duplicates drained")
    assert len(_executions(db, job["id"])) == 1
    assert _job(api, job["id"])["attempts"] == 1


def test_message_for_unknown_job_is_deleted(worker_factory: Any, runtime: Any) -> None:
    runtime.sqs.send_batch([Outgoing(uuid.uuid4())])
    runtime.sqs.client.send_message(QueueUrl=runtime.sqs.url, MessageBody="not json")
    worker_factory()
    wait_for(lambda: queue_is_empty(runtime.sqs), what="foreign messages deleted")


def test_many_jobs_over_two_workers_each_run_once(
    api: Any, worker_factory: Any, db: Any, settings: Any
) -> None:
    worker_factory()
    worker_factory()
    ids = [api.post("/jobs", json={"task": "record"}).json()["id"] for _ in range(60)]

    def all_done() -> bool:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            return cur.fetchone()[0] == len(ids)

    wait_for(all_done, timeout=90, what="all jobs to succeed")
    with db.cursor() as cur:
        cur.execute("SELECT job_id, count(*) FROM test_executions GROUP BY job_id")
        counts = dict(cur.fetchall())
    assert len(counts) == len(ids) and set(counts.values()) == {1}


def test_worker_survives_sqs_outage(db: Any, database_url: str, worker_factory: Any) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.cli.dev import SqsServer
    from tests.conftest import make_settings

    server = SqsServer().start()
    try:
        settings = make_settings(database_url, server.endpoint, dispatch_after_seconds=0.5)
        worker = worker_factory(settings)
        with TestClient(create_app(settings)) as api:
            first = api.post("/jobs", json={"task": "echo"}).json()
            wait_for_status(api, first["id"], "succeeded")
            server.stop()
            during = api.post("/jobs", json={"task": "echo"}).json()
            assert during["status"] == "queued"
            server = SqsServer(port=server.port).start()
            wait_for_status(api, during["id"], "succeeded", timeout=60)
        assert worker.consumer.alive()
    finally:
        server.stop()


def test_worker_survives_database_connections_being_killed(
    api: Any, worker_factory: Any, db: Any
) -> None:
    worker_factory()
    first = api.post("/jobs", json={"task": "echo"}).json()
    wait_for_status(api, first["id"], "succeeded")
    with db.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'jobq' AND pid <> pg_backend_pid()"
        )
        assert cur.rowcount >= 1
    ids = [api.post("/jobs", json={"task": "echo"}).json()["id"] for _ in range(3)]
    for job_id in ids:
        wait_for_status(api, job_id, "succeeded")


def test_job_longer_than_visibility_timeout_is_not_redelivered(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from tests.conftest import make_settings

    settings = make_settings(
        database_url, sqs_endpoint, visibility_timeout_seconds=5, heartbeat_seconds=1.0
    )
    worker_factory(settings)
    worker_factory(settings)
    with TestClient(create_app(settings)) as api:
        job = api.post("/jobs", json={"task": "record", "payload": {"sleep": 9}}).json()
        done = wait_for_status(api, job["id"], "succeeded", timeout=40)
    # Nearly twice the visibility timeout, yet one execution and one attempt: heartbeats held it.
    assert done["attempts"] == 1
    assert len(_executions(db, job["id"])) == 1
