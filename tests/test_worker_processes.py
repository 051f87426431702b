"""Worker processes under signals: SIGKILL mid-job, SIGTERM with a running job, scale-out."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.helpers import scalar, start_worker_process, wait_for


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

    from app.api.app import create_app

    first = start_worker_process(short_visibility, tmp_path / "w1.log")
    procs.append(first)
    with TestClient(create_app(short_visibility)) as api:
        job = api.post("/jobs", json={"task": "record", "payload": {"sleep": 30}}).json()
        wait_for(
            lambda: scalar(db, "SELECT count(*) FROM test_executions WHERE job_id = %s", job["id"]),
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
    assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'running'") == 0


def test_sigterm_past_grace_releases_job_for_another_worker(
    database_url: str, sqs_endpoint: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

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


def test_sigterm_during_a_non_cooperative_job_exits_within_the_grace_and_never_overlaps(
    database_url: str, sqs_endpoint: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    import time

    from fastapi.testclient import TestClient

    from app.api.app import create_app

    settings = make_settings(database_url, sqs_endpoint, shutdown_grace_seconds=4)
    first = start_worker_process(settings, tmp_path / "w1.log")
    procs.append(first)
    with TestClient(create_app(settings)) as api:
        # 40 s of work that ignores ctx.cancelled (it records its run in test_executions).
        job = api.post("/jobs", json={"task": "stubborn", "payload": {"seconds": 40}}).json()
        wait_for(
            lambda: scalar(db, "SELECT count(*) FROM test_executions WHERE job_id = %s", job["id"]),
            what="the first worker to start the job",
        )
        procs.append(start_worker_process(settings, tmp_path / "w2.log"))  # idle, waiting
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
        exited = time.monotonic()
        assert exited - signalled < 4 + 2  # the grace, whatever the handler does
        first_gone_at = scalar(db, "SELECT now()")
        with db.cursor() as cur:
            cur.execute("UPDATE jobs SET payload = '{\"seconds\": 0}' WHERE id = %s", (job["id"],))
        done = wait_for(
            lambda: (j := api.get(f"/jobs/{job['id']}").json())["status"] == "succeeded" and j,
            timeout=60,
            what="the second worker to run it",
        )
    outcomes = [a["outcome"] for a in api.get(f"/jobs/{job['id']}/attempts").json()]
    assert outcomes == ["interrupted", "succeeded"] and done["failures"] == 0
    with db.cursor() as cur:
        cur.execute(
            "SELECT pid, started_at, finished_at FROM test_executions"
            " WHERE job_id = %s ORDER BY id",
            (job["id"],),
        )
        (pid1, _, end1), (pid2, start2, _) = cur.fetchall()
    assert pid1 == first.pid and pid2 != pid1
    assert end1 is None  # the first run ended with its process, unfinished
    assert start2 > first_gone_at  # the second began only once the first process was gone


def test_poison_job_among_ordinary_jobs_is_the_only_one_that_fails(
    short_visibility: Any, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(short_visibility)) as api:
        poison = api.post("/jobs", json={"task": "record", "payload": {"crash_attempts": 99}})
        poison_id = poison.json()["id"]
        ordinary = [
            api.post("/jobs", json={"task": "record", "payload": {"sleep": 1}}).json()["id"]
            for _ in range(12)
        ]
        everything = [poison_id, *ordinary]

        def keep_a_worker_alive() -> bool:
            if all(p.poll() is not None for p in procs):
                procs.append(start_worker_process(short_visibility, tmp_path / "w.log"))
            return scalar(
                db,
                "SELECT count(*) FROM jobs WHERE id::text = ANY(%s)"
                " AND status IN ('succeeded', 'failed')",
                everything,
            ) == len(everything)

        wait_for(keep_a_worker_alive, timeout=120, interval=0.2, what="every job to finish")
        final = api.get(f"/jobs/{poison_id}").json()
        # Its first run took the worker (and its neighbours' runs) down; its isolated second
        # run died alone: it is the culprit.
        assert final["status"] == "failed" and final["dead_lettered_at"] is not None
        assert "crashed its runner" in final["error"]
        outcomes = [a["outcome"] for a in api.get(f"/jobs/{poison_id}/attempts").json()]
        assert outcomes == ["lost", "crashed"]
        for job_id in ordinary:
            job = api.get(f"/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job  # every ordinary job beside it succeeds
            assert job["failures"] == 0


def test_500_jobs_over_two_worker_processes_run_exactly_once(
    database_url: str, sqs_endpoint: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    settings = make_settings(database_url, sqs_endpoint, worker_concurrency=8)
    for i in range(2):
        procs.append(start_worker_process(settings, tmp_path / f"w{i}.log"))
    with TestClient(create_app(settings)) as api:
        for _ in range(500):
            assert api.post("/jobs", json={"task": "record"}).status_code == 201
        wait_for(
            lambda: scalar(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'") == 500,
            timeout=240,
            interval=0.5,
            what="500 jobs to succeed",
        )
    assert scalar(db, "SELECT count(*) FROM test_executions") == 500
    assert scalar(db, "SELECT count(DISTINCT pid) FROM test_executions") == 2
    assert scalar(db, "SELECT max(attempts) FROM jobs") == 1


def test_worker_started_while_sqs_is_down_waits_for_it(
    database_url: str, db: Any, procs: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.cli.dev import SqsServer

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
