"""The dashboard's actions and views below the browser: bulk cancel and redrive in bounded
batches, the audit log naming the key, run now, the search parser, worker presence."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.errors import InvalidInput
from app.jobs import bulk
from app.jobs.filters import JobFilter
from app.jobs.states import JobStatus
from tests.helpers import job_statuses, wait_for

KEY = "submit-key-0123456789abcdef"


@pytest.fixture
def keyed(settings: Any) -> Any:
    """The app with auth on and one submit key named ops; the dashboard's CSRF cookie set."""
    s = settings.model_copy(update={"auth": "required", "api_keys": f"ops:submit:{KEY}"})
    with TestClient(create_app(s), headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert client.get("/dashboard/jobs").status_code == 200
        yield client


def _post(client: Any, path: str, **fields: str) -> Any:
    data = {"csrf_token": client.cookies.get("jobq_csrf"), **fields}
    headers = {"Origin": "http://testserver"}
    return client.post(path, data=data, headers=headers, follow_redirects=False)


def _failed(db: Any, n: int, *, dead: bool, task: str = "echo") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    with db.cursor() as cur:
        for i in ids:
            cur.execute(
                """INSERT INTO jobs (id, task, status, payload, max_attempts, attempts, error,
                                     finished_at, dead_lettered_at)
                   VALUES (%s, %s, 'failed', '{}', 3, 3, 'boom', now(),
                           CASE WHEN %s THEN now() END)""",
                (i, task, dead),
            )
    return ids


def test_bulk_redrive_takes_only_dead_lettered_jobs_and_is_audited(
    keyed: Any, db: Any, caplog: Any
) -> None:
    dead = _failed(db, 3, dead=True)
    alive = _failed(db, 2, dead=False)
    page = keyed.get("/dashboard/dlq").text
    assert all(i in page for i in dead) and not any(i in page for i in alive)
    confirm = keyed.get("/dashboard/bulk?action=redrive&dead_lettered=1").text
    assert 'id="confirm-count">3<' in confirm
    with caplog.at_level(logging.INFO, logger="jobq.audit"):
        done = _post(keyed, "/dashboard/bulk", action="redrive", dead_lettered="1")
    assert done.status_code == 303 and "redrive%3A+3+of+3" in done.headers["location"]
    assert set(job_statuses(db, dead).values()) == {"queued"}
    assert set(job_statuses(db, alive).values()) == {"failed"}
    audit = [r for r in caplog.records if r.name == "jobq.audit"]
    assert audit and audit[-1].actor == "key:ops" and audit[-1].changed == 3  # type: ignore[attr-defined]


def test_bulk_cancel_in_bounded_batches(keyed: Any, db: Any) -> None:
    future = "2099-01-01T00:00:00Z"
    ids = [
        keyed.post("/jobs", json={"task": "echo", "run_at": future}).json()["id"] for _ in range(5)
    ]
    other = keyed.post("/jobs", json={"task": "record", "run_at": future}).json()["id"]
    app = keyed.app
    result = bulk.run(
        app.state.runtime.sessions,
        lambda jobs: None,
        "cancel",
        JobFilter(task="echo"),
        actor="test",
        limit=3,
        batch=2,
    )
    assert (result.matched, result.changed, result.capped) == (3, 3, True)
    done = _post(keyed, "/dashboard/bulk", action="cancel", task="echo")
    assert "cancel%3A+2+of+2" in done.headers["location"]
    assert set(job_statuses(db, ids).values()) == {"cancelled"}
    assert job_statuses(db, [other])[other] == "scheduled"


def test_run_now_and_refusals(keyed: Any, db: Any) -> None:
    job = keyed.post("/jobs", json={"task": "echo", "run_at": "2099-01-01T00:00:00Z"}).json()
    done = _post(keyed, f"/dashboard/jobs/{job['id']}/run-now", next="/dashboard/scheduled")
    assert done.headers["location"].startswith("/dashboard/scheduled?msg=due+now")
    wait_for(lambda: job_statuses(db, [job["id"]])[job["id"]] == "queued", what="dispatch")
    again = _post(keyed, f"/dashboard/jobs/{job['id']}/run-now", next="https://evil.example/")
    assert "run-now+refused" in again.headers["location"]
    assert again.headers["location"].startswith("http://testserver/dashboard/jobs/")
    assert _post(keyed, f"/dashboard/jobs/{job['id']}/explode").status_code == 422


def test_search_parser_names_bad_fields() -> None:
    f = JobFilter.parse(
        {"task": " echo ", "status": "failed", "created_after": "2026-01-02T03:04", "error": "a%"}
    )
    assert f.task == "echo" and f.status is JobStatus.FAILED
    assert f.created_after == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert JobFilter.parse(f.params()) == f
    for bad, field in (
        ({"id": "nope"}, "id"),
        ({"status": "x"}, "status"),
        ({"queue": "urgent"}, "queue"),
        ({"finished_before": "soon"}, "finished_before"),
        ({"created_after": "2026-02-01", "created_before": "2026-01-01"}, "created_after"),
        ({"task": "t" * 300}, "task"),
    ):
        with pytest.raises(InvalidInput) as exc:
            JobFilter.parse(bad)
        assert exc.value.field == field


def test_worker_presence_row_and_clean_stop(worker_factory: Any, db: Any) -> None:
    worker = worker_factory(worker_presence_seconds=0.2)

    def row() -> Any:
        with db.cursor() as cur:
            cur.execute(
                "SELECT concurrency, stopped_at FROM workers WHERE id = %s", (worker.worker_id,)
            )
            return cur.fetchone()

    wait_for(lambda: row() is not None, what="the worker's row")
    assert row()[0] == worker.settings.worker_concurrency and row()[1] is None
    worker.stop(grace=2)
    assert row()[1] is not None  # marked stopped, not left to look dead
