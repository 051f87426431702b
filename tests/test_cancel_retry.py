"""Cancel (queued and running), retry of a failed job, and redrive of failed jobs by filter."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.conftest import make_settings
from tests.helpers import queue_depth, scalar, wait_for, wait_for_status


def test_cancel_queued_job_is_never_run(api: Any, worker_factory: Any, db: Any) -> None:
    job = api.post("/jobs", json={"task": "record"}).json()
    resp = api.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    worker = worker_factory()
    wait_for(
        lambda: not any(queue_depth(worker.sqs).values()),
        what="the cancelled job's message to be dropped",
    )
    assert scalar(db, "SELECT count(*) FROM test_executions") == 0
    again = api.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["field"] == "status"


def test_cancel_running_job_ends_cancelled(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, heartbeat_seconds=0.3)
    with TestClient(create_app(settings)) as api:
        worker_factory(settings)
        job = api.post("/jobs", json={"task": "sleep", "payload": {"seconds": 60}}).json()
        wait_for_status(api, job["id"], "running")
        resp = api.post(f"/jobs/{job['id']}/cancel")
        assert resp.status_code == 202 and resp.json()["cancel_requested_at"]
        done = wait_for_status(api, job["id"], "cancelled", timeout=15)
        assert done["finished_at"]
        history = api.get(f"/jobs/{job['id']}/attempts").json()
        assert [h["outcome"] for h in history] == ["cancelled"]


def test_cancel_unknown_job_is_404(api: Any) -> None:
    assert api.post("/jobs/00000000-0000-0000-0000-000000000000/cancel").status_code == 404


def test_retry_failed_job_runs_again_keeping_history(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "permanent"}).json()
    wait_for_status(api, job["id"], "failed")
    resp = api.post(f"/jobs/{job['id']}/retry")
    assert resp.status_code == 200 and resp.json()["status"] == "queued"
    assert resp.json()["attempts"] == 0 and resp.json()["error"] is None
    wait_for_status(api, job["id"], "failed")
    history = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [h["attempt"] for h in history] == [1, 1]
    ok = api.post("/jobs", json={"task": "echo"}).json()
    wait_for_status(api, ok["id"], "succeeded")
    assert api.post(f"/jobs/{ok['id']}/retry").status_code == 409


def test_redrive_replays_failed_jobs_by_filter(api: Any, worker_factory: Any, db: Any) -> None:
    worker_factory()
    failed = [api.post("/jobs", json={"task": "permanent"}).json()["id"] for _ in range(3)]
    other = api.post("/jobs", json={"task": "fail", "max_attempts": 1}).json()["id"]
    for job_id in [*failed, other]:
        wait_for_status(api, job_id, "failed")
    resp = api.post("/dlq/redrive", json={"task": "permanent"})
    assert resp.status_code == 200
    assert resp.json()["redriven"] == 3 and set(resp.json()["job_ids"]) == set(failed)
    for job_id in failed:
        wait_for_status(api, job_id, "failed")
    assert scalar(db, "SELECT count(*) FROM job_attempts WHERE outcome = 'failed'") == 7
    window = {"failed_after": "2030-01-01T00:00:00Z"}
    assert api.post("/dlq/redrive", json=window).json()["redriven"] == 0
    bad = api.post(
        "/dlq/redrive",
        json={"failed_after": "2030-01-02T00:00:00Z", "failed_before": "2030-01-01T00:00:00Z"},
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "failed_after"
