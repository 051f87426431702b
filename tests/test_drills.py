"""Fault drills: a stream of jobs whose handler records every execution, under faults.

Each drill checks that every accepted job reached a final state (none lost) and that no job ran
in two places at once; duplicate executions are counted (allowed only as the documented
at-least-once consequence of killing a worker mid-job). `make test` runs them small;
`make drills` runs them at full size (JOBQ_DRILL_JOBS, JOBQ_DRILL_OUTAGE_SECONDS) and prints
the report.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.cli.dev import SqsServer, start_postgres
from app.migrate import upgrade
from app.sqs.queue import make_sqs_client
from tests import drills
from tests.conftest import create_database, make_settings
from tests.helpers import (
    api_process,
    delete_messages,
    log_mentions,
    wait_for,
)
from tests.tasks import EXECUTIONS_DDL

JOBS = int(os.environ.get("JOBQ_DRILL_JOBS", str(drills.size(120, 2000))))
OUTAGE = float(os.environ.get("JOBQ_DRILL_OUTAGE_SECONDS", str(drills.size(3, 10))))
pytestmark = pytest.mark.drill


def _submit_plain(api: Any, n: int) -> set[str]:
    """n single POST /jobs (the group-commit path), each of which must be accepted."""
    ids: set[str] = set()
    for _ in range(n):
        resp = api.post("/jobs", json={"task": "record", "payload": {"sleep": 0.01}})
        assert resp.status_code == 201, resp.text
        ids.add(resp.json()["id"])
    return ids


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    """Start worker processes; all are stopped at teardown."""
    yield from drills.worker_processes(tmp_path)


def test_drill_sigkill_workers_repeatedly(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    # A kill costs every job the victim holds one crash: 4 slots and 10 crashes keep
    # "killed on every try" (which correctly ends failed) out of a drill about loss.
    settings = make_settings(
        database_url,
        sqs_endpoint,
        visibility_timeout_seconds=5,
        heartbeat_seconds=1.0,
        worker_concurrency=4,
        max_crashes=10,
    )
    live = [workers(settings) for _ in range(3)]
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS, sleep=0.25)
        deadline = time.monotonic() + 120 + JOBS / 5
        next_kill = time.monotonic() + 1
        kills = 0
        while not drills.all_final(db, accepted) and time.monotonic() < deadline:
            if time.monotonic() >= next_kill:
                victim = random.choice([p for p in live if p.poll() is None])
                victim.send_signal(signal.SIGKILL)
                victim.wait(10)
                live = [p for p in live if p.poll() is None] + [workers(settings)]
                kills += 1
                next_kill = time.monotonic() + 1 + random.random() * 2
            time.sleep(0.2)  # the drill's pace, not synchronisation: state is polled
        result = drills.report(
            db, f"SIGKILL a worker every 1-3 s ({kills} kills)", accepted, started
        )
    assert kills >= 1
    result.assert_safe(duplicates=None)


def test_drill_sqs_outage_during_submission_and_processing(
    database_url: str, db: Any, workers: Any
) -> None:
    server = SqsServer().start()
    try:
        settings = make_settings(database_url, server.endpoint, dispatch_after_seconds=1.0)
        for _ in range(2):
            workers(settings)
        started = time.monotonic()
        with TestClient(create_app(settings)) as api:
            accepted = drills.submit_batch(api, JOBS // 2)
            server.stop()
            outage_ends = time.monotonic() + OUTAGE
            while time.monotonic() < outage_ends:
                resp = api.post("/jobs", json={"task": "record", "payload": {"sleep": 0.01}})
                assert resp.status_code == 201  # accepted while SQS is down
                accepted.add(resp.json()["id"])
            server = SqsServer(port=server.port).start()
            wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS / 5, interval=0.3)
            result = drills.report(db, f"SQS down {OUTAGE:g} s", accepted, started)
    finally:
        server.stop()
    result.assert_safe()


def test_drill_postgres_restart_during_processing(
    sqs_endpoint: str, workers: Any, tmp_path: Path
) -> None:
    url, server = start_postgres(tmp_path / "pg")  # our own server: we restart it
    try:
        db_url = create_database(url, "jobq_drill")
        upgrade(db_url)
        conn = psycopg2.connect(db_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(EXECUTIONS_DDL)
        settings = make_settings(db_url, sqs_endpoint)
        env_db = os.environ.get("JOBQ_TEST_DATABASE_URL")
        os.environ["JOBQ_TEST_DATABASE_URL"] = db_url  # where the record task writes
        for _ in range(2):
            workers(settings)
        started = time.monotonic()
        with TestClient(create_app(settings)) as api:
            accepted = drills.submit_batch(api, JOBS, sleep=0.1)
            accepted |= _submit_plain(api, 3)  # the committing thread now holds a connection
            conn.close()
            _restart_postgres(server, down_seconds=OUTAGE)
            # That connection died with the server: the next submits retry on a fresh one.
            accepted |= _submit_plain(api, 3)
            conn = psycopg2.connect(db_url)
            conn.autocommit = True
            wait_for(lambda: drills.all_final(conn, accepted), timeout=120 + JOBS / 5, interval=0.3)
            result = drills.report(
                conn, f"PostgreSQL restart ({OUTAGE:g} s down)", accepted, started
            )
        conn.close()
    finally:
        if env_db:
            os.environ["JOBQ_TEST_DATABASE_URL"] = env_db
        for p in workers.procs:
            p.kill()
            p.wait(10)
        server.cleanup()
    result.assert_safe(duplicates=None)


def _restart_postgres(server: Any, down_seconds: float) -> None:
    """Fast shutdown (SIGINT to the postmaster), stay down, start again on the same socket."""
    os.kill(server.get_pid(), signal.SIGINT)
    wait_for(lambda: not (Path(server.pgdata) / "postmaster.pid").exists(), what="pg to stop")
    time.sleep(down_seconds)  # the outage itself
    server._postmaster_info = None  # pgserver caches the dead postmaster; forget it
    server.ensure_postgres_running()


def test_drill_sigterm_all_workers_then_restart(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, shutdown_grace_seconds=10)
    first = [workers(settings) for _ in range(2)]
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS, sleep=0.1)
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM test_executions") >= JOBS // 4,
            timeout=120,
            what="a quarter of the jobs to start",
        )
        for p in first:
            p.send_signal(signal.SIGTERM)
        assert [p.wait(40) for p in first] == [0, 0]
        assert drills.count(db, "SELECT count(*) FROM jobs WHERE status = 'running'") == 0
        for _ in range(2):
            workers(settings)
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS / 5, interval=0.3)
        result = drills.report(db, "SIGTERM all workers, restart", accepted, started)
    result.assert_safe()


# A job whose message vanished counts as drifted 5 s (visibility) + 0.5 s after it was due.
RECONCILE_FAST = {
    "visibility_timeout_seconds": 5,
    "heartbeat_seconds": 1.0,
    "reconcile_interval_seconds": 0.2,
    "reconcile_margin_seconds": 0.5,
}


def test_drill_sqs_messages_deleted_behind_jobqs_back(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **RECONCILE_FAST)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS)
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == 0
        )
        # Half the queued jobs lose their message (an operator's cleanup, a retention expiry).
        deleted = delete_messages(make_sqs_client(settings), settings.sqs_queue_url, JOBS // 2)
        for _ in range(2):
            workers(settings)
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS / 5, interval=0.3)
        result = drills.report(
            db, f"{deleted} queued jobs' SQS messages deleted", accepted, started
        )
    assert deleted == JOBS // 2
    result.assert_safe()


def test_drill_two_api_processes_reconciler_leader_killed(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any, tmp_path: Path
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **RECONCILE_FAST)
    logs = [tmp_path / "api-a.log", tmp_path / "api-b.log"]
    started = time.monotonic()
    with api_process(settings, logs[0]) as a, api_process(settings, logs[1]) as b:
        with httpx.Client(base_url=a[0], timeout=30) as api:
            accepted = drills.submit_batch(api, JOBS)
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == 0
        )
        make_sqs_client(settings).purge_queue(QueueUrl=settings.sqs_queue_url)
        # The process that repairs the loss led that pass: SIGKILL it.
        first = wait_for(
            lambda: [i for i, log in enumerate(logs) if log_mentions(log, "re-sent")],
            timeout=30,
            what="an API process to re-send the purged jobs",
        )[0]
        (_, leader), survivor = (a, logs[1]) if first == 0 else (b, logs[0])
        seen = survivor.stat().st_size
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(10)
        killed = time.monotonic()
        # Lost again (deleted: SQS allows one purge a minute); only the survivor is left. Each
        # message once: on a slow machine the survivor may re-send some while we delete.
        delete_messages(make_sqs_client(settings), settings.sqs_queue_url, len(accepted))
        deleting = time.monotonic() - killed
        wait_for(
            lambda: log_mentions(survivor, "re-sent", after=seen),
            timeout=30,
            what="the surviving API process to take over",
        )
        takeover = time.monotonic() - killed
        for _ in range(2):
            workers(settings)
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS / 5, interval=0.3)
        result = drills.report(
            db,
            f"2 API processes, reconciler leader killed (takeover {takeover:.1f} s)",
            accepted,
            started,
        )
    # Due again visibility + margin after the leader's re-send, and missing once deleted; then
    # at most one interval (the rest is slack for a loaded machine).
    assert takeover < deleting + 5 + 0.5 + 5, (takeover, deleting)
    result.assert_safe()
