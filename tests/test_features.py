"""Job features: idempotency, delays and schedules, priorities, per-job options, cancel,
retry and redrive, batch submit, filters, retention. Real PostgreSQL and SQS server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.conftest import make_settings
from tests.helpers import wait_for
from worker.consumer import weighted_order


def _status(api: Any, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: (j := api.get(f"/jobs/{job_id}").json())["status"] in statuses and j,
        timeout=timeout,
        what=f"{job_id} to reach {statuses}",
    )


def _one(db: Any, sql: str, *args: Any) -> Any:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


# -- idempotency ----------------------------------------------------------------------------


def test_same_key_same_request_returns_original(api: Any, db: Any) -> None:
    body = {"task": "echo", "payload": {"n": 1}}
    first = api.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.post("/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    in_body = api.post("/jobs", json={**body, "idempotency_key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200 and in_body.status_code == 200
    assert first.json()["id"] == again.json()["id"] == in_body.json()["id"]
    assert _one(db, "SELECT count(*) FROM jobs") == 1


def test_same_key_different_request_is_409_naming_the_first_job(api: Any) -> None:
    first = api.post(
        "/jobs", json={"task": "echo", "payload": {"n": 1}}, headers={"Idempotency-Key": "k"}
    ).json()
    resp = api.post(
        "/jobs", json={"task": "echo", "payload": {"n": 2}}, headers={"Idempotency-Key": "k"}
    )
    assert resp.status_code == 409
    assert resp.json()["error"]["field"] == "idempotency_key"
    assert resp.json()["error"]["job_id"] == first["id"]


def test_concurrent_identical_requests_make_one_job(api: Any, db: Any) -> None:
    codes: list[int] = []
    ids: set[str] = set()
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        r = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "race"})
        codes.append(r.status_code)
        ids.add(r.json()["id"])

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200] * 7 + [201]
    assert len(ids) == 1 and _one(db, "SELECT count(*) FROM jobs") == 1


def test_expired_key_makes_a_new_job(api: Any, db: Any) -> None:
    first = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "old"}).json()
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET idempotency_expires_at = now() - interval '1 second'")
    second = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "old"})
    assert second.status_code == 201 and second.json()["id"] != first["id"]


def test_conflicting_header_and_body_keys_are_422(api: Any) -> None:
    resp = api.post(
        "/jobs", json={"task": "echo", "idempotency_key": "a"}, headers={"Idempotency-Key": "b"}
    )
    assert resp.status_code == 422 and resp.json()["error"]["field"] == "idempotency_key"


# -- delays and schedules ----------------------------------------------------------------------


def test_short_delay_uses_sqs_delay(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "echo", "delay_seconds": 2}).json()
    assert job["status"] == "queued" and job["run_at"]
    done = _status(api, job["id"], "succeeded")
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
    done = _status(api, job["id"], "succeeded")
    started = datetime.fromisoformat(done["started_at"])
    assert due <= started < due + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"delay_seconds": -1}, "delay_seconds"),
        ({"delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ({"priority": "urgent"}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
    ],
)
def test_bad_job_options_are_422(api: Any, extra: dict[str, Any], field: str) -> None:
    resp = api.post("/jobs", json={"task": "echo", **extra})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


# -- priorities and per-job options ----------------------------------------------------------


def test_priorities_go_to_their_own_queues_and_all_run(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    base = make_settings(database_url, sqs_endpoint)
    high = make_settings(database_url, sqs_endpoint).sqs_queue_url
    low = make_settings(database_url, sqs_endpoint).sqs_queue_url
    settings = base.model_copy(update={"sqs_high_queue_url": high, "sqs_low_queue_url": low})
    with TestClient(create_app(settings)) as api:
        ids = {
            p: api.post("/jobs", json={"task": "echo", "priority": p}).json()["id"]
            for p in ("high", "default", "low")
        }
        client = api.app.state.runtime.sqs.client
        for url in (high, base.sqs_queue_url, low):
            wait_for(
                lambda u=url: (
                    int(
                        client.get_queue_attributes(
                            QueueUrl=u, AttributeNames=["ApproximateNumberOfMessages"]
                        )["Attributes"]["ApproximateNumberOfMessages"]
                    )
                    == 1
                ),
                what=f"one message on {url}",
            )
        worker_factory(settings)
        for job_id in ids.values():
            _status(api, job_id, "succeeded")
        assert api.get(f"/jobs/{ids['high']}").json()["priority"] == "high"


def test_weighted_order_prefers_heavy_queues_without_starving_light_ones() -> None:
    queues = [("high", 6), ("default", 3), ("low", 1)]
    firsts = [weighted_order(queues, rnd=lambda i=i: i / 100)[0] for i in range(100)]
    assert firsts.count("high") == 60 and firsts.count("default") == 30
    assert firsts.count("low") == 10
    assert sorted(weighted_order(queues)) == ["default", "high", "low"]
    assert weighted_order([("a", 0), ("b", 1)]) == ["b"]


def test_per_job_max_attempts_and_timeout(api: Any, worker_factory: Any) -> None:
    worker_factory()
    once = api.post("/jobs", json={"task": "fail", "max_attempts": 1}).json()
    short = api.post(
        "/jobs",
        json={
            "task": "sleep",
            "payload": {"seconds": 30},
            "timeout_seconds": 0.5,
            "max_attempts": 1,
        },
    ).json()
    assert _status(api, once["id"], "failed")["attempts"] == 1
    timed = _status(api, short["id"], "failed")
    assert "timed out" in timed["error"]


# -- cancel, retry, redrive -----------------------------------------------------------------


def test_cancel_queued_job_is_never_run(api: Any, worker_factory: Any, db: Any) -> None:
    job = api.post("/jobs", json={"task": "record"}).json()
    resp = api.post(f"/jobs/{job['id']}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    worker = worker_factory()
    wait_for(
        lambda: (
            int(worker.sqs.attributes()["ApproximateNumberOfMessages"]) == 0
            and int(worker.sqs.attributes()["ApproximateNumberOfMessagesNotVisible"]) == 0
        ),
        what="the cancelled job's message to be dropped",
    )
    assert _one(db, "SELECT count(*) FROM test_executions") == 0
    again = api.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["field"] == "status"


def test_cancel_running_job_ends_cancelled(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, heartbeat_seconds=0.3)
    with TestClient(create_app(settings)) as api:
        worker_factory(settings)
        job = api.post("/jobs", json={"task": "sleep", "payload": {"seconds": 60}}).json()
        _status(api, job["id"], "running")
        resp = api.post(f"/jobs/{job['id']}/cancel")
        assert resp.status_code == 202 and resp.json()["cancel_requested_at"]
        done = _status(api, job["id"], "cancelled", timeout=15)
        assert done["finished_at"]
        history = api.get(f"/jobs/{job['id']}/attempts").json()
        assert [h["outcome"] for h in history] == ["cancelled"]


def test_cancel_unknown_job_is_404(api: Any) -> None:
    assert api.post("/jobs/00000000-0000-0000-0000-000000000000/cancel").status_code == 404


def test_retry_failed_job_runs_again_keeping_history(api: Any, worker_factory: Any) -> None:
    worker_factory()
    job = api.post("/jobs", json={"task": "permanent"}).json()
    _status(api, job["id"], "failed")
    resp = api.post(f"/jobs/{job['id']}/retry")
    assert resp.status_code == 200 and resp.json()["status"] == "queued"
    assert resp.json()["attempts"] == 0 and resp.json()["error"] is None
    _status(api, job["id"], "failed")
    history = api.get(f"/jobs/{job['id']}/attempts").json()
    assert [h["attempt"] for h in history] == [1, 1]
    ok = api.post("/jobs", json={"task": "echo"}).json()
    _status(api, ok["id"], "succeeded")
    assert api.post(f"/jobs/{ok['id']}/retry").status_code == 409


def test_redrive_replays_failed_jobs_by_filter(api: Any, worker_factory: Any, db: Any) -> None:
    worker_factory()
    failed = [api.post("/jobs", json={"task": "permanent"}).json()["id"] for _ in range(3)]
    other = api.post("/jobs", json={"task": "fail", "max_attempts": 1}).json()["id"]
    for job_id in [*failed, other]:
        _status(api, job_id, "failed")
    resp = api.post("/dlq/redrive", json={"task": "permanent"})
    assert resp.status_code == 200
    assert resp.json()["redriven"] == 3 and set(resp.json()["job_ids"]) == set(failed)
    for job_id in failed:
        _status(api, job_id, "failed")
    assert _one(db, "SELECT count(*) FROM job_attempts WHERE outcome = 'failed'") == 7
    window = {"failed_after": "2030-01-01T00:00:00Z"}
    assert api.post("/dlq/redrive", json=window).json()["redriven"] == 0
    bad = api.post(
        "/dlq/redrive",
        json={"failed_after": "2030-01-02T00:00:00Z", "failed_before": "2030-01-01T00:00:00Z"},
    )
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "failed_after"


# -- batch --------------------------------------------------------------------------------


def test_batch_reports_item_errors_and_keeps_valid_items(api: Any, worker_factory: Any) -> None:
    jobs = [{"task": "echo", "payload": {"i": i}} for i in range(3)]
    jobs.insert(1, {"task": "nope"})
    resp = api.post("/jobs/batch", json={"jobs": jobs})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["created"], body["errors"]) == (3, 1)
    assert body["items"][1]["status"] == "error"
    assert body["items"][1]["error"]["field"] == "jobs.1.task"
    worker_factory()
    for item in body["items"]:
        if item["job"]:
            _status(api, item["job"]["id"], "succeeded")


def test_atomic_batch_rejects_everything_on_one_bad_item(api: Any, db: Any) -> None:
    jobs = [{"task": "echo"}, {"task": "sleep", "payload": {"seconds": -1}}]
    resp = api.post("/jobs/batch", json={"jobs": jobs, "atomic": True})
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "jobs.1.payload.seconds"
    assert _one(db, "SELECT count(*) FROM jobs") == 0


def test_batch_limits_and_idempotent_items(api: Any, db: Any) -> None:
    too_many = api.post("/jobs/batch", json={"jobs": [{"task": "echo"}] * 501})
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "jobs"
    assert api.post("/jobs/batch", json={"jobs": []}).status_code == 422
    item = {"task": "echo", "idempotency_key": "batch-1"}
    first = api.post("/jobs/batch", json={"jobs": [item, {"task": "echo"}]}).json()
    second = api.post("/jobs/batch", json={"jobs": [item]}).json()
    assert first["created"] == 2 and second["existing"] == 1
    assert second["items"][0]["job"]["id"] == first["items"][0]["job"]["id"]
    assert _one(db, "SELECT count(*) FROM jobs") == 2


def test_full_batch_of_500_in_one_request(api: Any, db: Any) -> None:
    resp = api.post("/jobs/batch", json={"jobs": [{"task": "echo"}] * 500})
    assert resp.status_code == 200 and resp.json()["created"] == 500
    assert _one(db, "SELECT count(*) FROM jobs") == 500


# -- listing and retention ------------------------------------------------------------------


def test_list_filters_by_time_window_and_key(api: Any) -> None:
    a = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "find-me"}).json()
    b = api.post("/jobs", json={"task": "echo"}).json()
    by_key = api.get("/jobs", params={"idempotency_key": "find-me"}).json()["items"]
    assert [j["id"] for j in by_key] == [a["id"]]
    after_a = api.get("/jobs", params={"created_after": a["created_at"]}).json()["items"]
    assert [j["id"] for j in after_a] == [b["id"]]
    before_b = api.get("/jobs", params={"created_before": b["created_at"]}).json()["items"]
    assert [j["id"] for j in before_b] == [a["id"]]
    naive = api.get("/jobs", params={"created_after": "2030-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "created_after"


def test_retention_prunes_old_finished_jobs_only(db: Any, runtime: Any) -> None:
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, status, max_attempts, finished_at) VALUES
               (gen_random_uuid(), 'echo', 'succeeded', 3, now() - interval '20 days'),
               (gen_random_uuid(), 'echo', 'failed', 3, now() - interval '20 days'),
               (gen_random_uuid(), 'echo', 'failed', 3, now() - interval '2 days'),
               (gen_random_uuid(), 'echo', 'queued', 3, NULL)"""
        )
    from app.maintenance.retention import Retention

    assert Retention(runtime.sessions, retention_days=14).prune() == 2
    assert _one(db, "SELECT count(*) FROM jobs") == 2
    assert _one(db, "SELECT count(*) FROM jobs WHERE status = 'failed'") == 1


def test_cli_dlq_list_and_redrive(api: Any, settings: Any, worker_factory: Any) -> None:
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT, settings_env

    worker_factory()
    job = api.post("/jobs", json={"task": "permanent"}).json()
    _status(api, job["id"], "failed")

    def jobq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=settings_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listed = jobq("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout.splitlines()[-1])] == [job["id"]]
    redriven = jobq("dlq", "redrive", "--task", "permanent", "--json")
    assert redriven.returncode == 0, redriven.stderr
    assert json.loads(redriven.stdout.splitlines()[-1])["redriven"] == 1
    _status(api, job["id"], "failed")  # ran again (and failed again)
    assert len(api.get(f"/jobs/{job['id']}/attempts").json()) == 2
    naive = jobq("dlq", "redrive", "--since", "2030-01-01T00:00:00")
    assert naive.returncode == 1 and "--since" in naive.stderr
