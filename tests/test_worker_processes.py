"""Worker processes under signals: SIGKILL mid-job, SIGTERM with a running job, scale-out."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.helpers import start_worker_process, wait_for


def _one(db: Any, sql: str, *args: Any) -> Any:
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


@pytest.fixture
def procs() -> Any:
    """Worker processes started by a test; all are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.fixture
def short_visibility(database_url: str, sqs_endpoint: str, db: Any) -> Any:
    """Settings where an unheartbeated message comes back after 3 s."""
    return make_settings(
        database_url, sqs_endpoint, visibility_timeout_seconds=5, heartbeat_seconds=1.0
    )


def test_sigkilled_worker_job_completes_in_another_worker(
    short_visibility: Any, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    first = start_worker_process(short_visibility, tmp_path / "w1.log")
    procs.append(first)
    with TestClient(create_app(short_visibility)) as api:
        job = api.post("/jobs", json={"task": "record", "payload": {"sleep": 30}}).json()
        wait_for(
            lambda: _one(db, "SELECT count(*) FROM test_executions WHERE job_id = %s", job["id"]),
            what="the first worker to start the job",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # Same job, now quick: the next attempt finishes.
        with db.cursor() as cur:
            cur.execute("UPDATE jobs SET payload = '{}' WHERE id = %s", (job["id"],))
        procs.append(start_worker_process(short_visibility, tmp_path / "w2.log"))
        done = wait_for(
            lambda: (j := api.get(f"/jobs/{job['id']}").json())["status"] == "succeeded" and j,
            timeout=60,
            what="the job to complete in the second worker",
        )
        assert done["attempts"] == 2
        outcomes = [a["outcome"] for a in api.get(f"/jobs/{job['id']}/attempts").json()]
        assert outcomes == ["lost", "succeeded"]


def test_sigterm_lets_running_job_finish_and_exits_zero(
    settings: Any, api: Any, db: Any, procs: Any, tmp_path: Path
) -> None:
    worker = start_worker_process(settings, tmp_path / "w.log")
    procs.append(worker)
    job = api.post("/jobs", json={"task": "sleep", "payload": {"seconds": 3}}).json()
    wait_for(
        lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "running",
        what="the job to start",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, (tmp_path / "w.log").read_text()
    final = api.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "succeeded" and final["result"] == {"slept": 3}
    assert _one(db, "SELECT count(*) FROM jobs WHERE status = 'running'") == 0


def test_sigterm_past_grace_releases_job_for_another_worker(
    database_url: str, sqs_endpoint: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(database_url, sqs_endpoint, shutdown_grace_seconds=1)
    worker = start_worker_process(settings, tmp_path / "w.log")
    procs.append(worker)
    with TestClient(create_app(settings)) as api:
        job = api.post("/jobs", json={"task": "sleep", "payload": {"seconds": 60}}).json()
        wait_for(
            lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "running",
            what="the job to start",
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        interrupted = api.get(f"/jobs/{job['id']}").json()
        assert interrupted["status"] == "retrying"
        assert "interrupted" in interrupted["error"]


def test_poison_job_that_kills_every_worker_ends_in_dlq(
    short_visibility: Any, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(short_visibility)) as api:
        job = api.post("/jobs", json={"task": "record", "payload": {"crash_attempts": 99}}).json()

        def keep_a_worker_alive() -> bool:
            if all(p.poll() is not None for p in procs):
                procs.append(start_worker_process(short_visibility, tmp_path / "w.log"))
            return api.get(f"/jobs/{job['id']}").json()["status"] == "failed"

        wait_for(keep_a_worker_alive, timeout=90, interval=0.2, what="the poison job to fail")
        final = api.get(f"/jobs/{job['id']}").json()
        assert final["attempts"] == 3
        assert "dead-letter" in final["error"] or "last attempt lost" in final["error"]
        assert _one(db, "SELECT count(*) FROM test_executions WHERE job_id = %s", job["id"]) == 3

        def dead_lettered() -> bool:
            keep_a_worker_alive()  # the DLQ consumer runs inside the worker
            return bool(
                _one(db, "SELECT dead_lettered_at IS NOT NULL FROM jobs WHERE id = %s", job["id"])
            )

        wait_for(dead_lettered, timeout=60, interval=0.2, what="the message to reach the DLQ")


def test_500_jobs_over_two_worker_processes_run_exactly_once(
    database_url: str, sqs_endpoint: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(database_url, sqs_endpoint, worker_concurrency=8)
    for i in range(2):
        procs.append(start_worker_process(settings, tmp_path / f"w{i}.log"))
    with TestClient(create_app(settings)) as api:
        for _ in range(500):
            assert api.post("/jobs", json={"task": "record"}).status_code == 201
        wait_for(
            lambda: _one(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'") == 500,
            timeout=240,
            interval=0.5,
            what="500 jobs to succeed",
        )
    assert _one(db, "SELECT count(*) FROM test_executions") == 500
    assert _one(db, "SELECT count(DISTINCT pid) FROM test_executions") == 2
    assert _one(db, "SELECT max(attempts) FROM jobs") == 1


def test_worker_started_while_sqs_is_down_waits_for_it(
    database_url: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.devstack import SqsServer
    from app.main import create_app

    server = SqsServer().start()
    settings = make_settings(database_url, server.endpoint, dispatch_after_seconds=0.5)
    server.stop()
    log = tmp_path / "w.log"
    worker = start_worker_process(settings, log)
    procs.append(worker)
    try:
        wait_for(lambda: "queue set-up failed" in log.read_text(), what="a failed set-up")
        assert worker.poll() is None, log.read_text()  # still running, retrying
        server = SqsServer(port=server.port).start()
        with TestClient(create_app(settings)) as api:
            job = api.post("/jobs", json={"task": "fail", "max_attempts": 3}).json()
            # The DLQ consumer starts once set-up succeeds: the failed job gets dead-lettered.
            wait_for(
                lambda: api.get(f"/jobs/{job['id']}").json()["dead_lettered_at"] is not None,
                timeout=60,
                what="the job to fail and be settled by the DLQ consumer",
            )
    finally:
        server.stop()
