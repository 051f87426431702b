"""GET /jobs filters (time window, idempotency key) and the retention of finished jobs."""

from __future__ import annotations

from typing import Any

from tests.helpers import scalar


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
    assert scalar(db, "SELECT count(*) FROM jobs") == 2
    assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'failed'") == 1
