"""Fault drills, infrastructure side: PostgreSQL connections terminated or exhausted, SQS
refusing or hanging, one worker's SQS path blackholed while PostgreSQL is fine. Each reports
through tests/drills.py and must end with 0 lost, 0 concurrent runs and 0 jobs failed without
running."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from tests import drills
from tests.conftest import TEST_MAX_RECEIVE_COUNT, make_settings
from tests.faults import Proxy, postgres_socket
from tests.helpers import wait_for

pytestmark = pytest.mark.drill
JOBS = drills.size(60, 1000)


@pytest.fixture
def workers(tmp_path: Path) -> Any:
    """Start worker processes; all are killed at teardown."""
    yield from drills.worker_processes(tmp_path)


@pytest.fixture
def sqs_proxy(sqs_endpoint: str) -> Any:
    """A cuttable proxy in front of the shared SQS endpoint."""
    url = urlsplit(sqs_endpoint)
    proxy = Proxy((url.hostname or "127.0.0.1", url.port or 80))
    yield proxy
    proxy.close()


# Short leases so that a fault outlasts one (the interesting case) within seconds.
FAST = {"visibility_timeout_seconds": 5, "heartbeat_seconds": 1.0}


def test_drill_postgresql_unreachable_longer_than_max_receive_count_times_visibility(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    # The workers lose PostgreSQL for longer than maxReceiveCount x visibility (4 x 5 s), after
    # which SQS would have dead-lettered every message it kept delivering; the API (its own
    # connection) keeps accepting jobs meanwhile.
    settings = make_settings(database_url, sqs_endpoint, **FAST)
    outage = TEST_MAX_RECEIVE_COUNT * 5 + 2
    proxy = Proxy(postgres_socket(database_url))
    try:
        behind = settings.model_copy(update={"database_url": proxy.database_url(database_url)})
        for _ in range(2):
            workers(behind)
        started = time.monotonic()
        with TestClient(create_app(settings)) as api:
            accepted = drills.submit_batch(api, JOBS, sleep=0.05)
            proxy.cut()
            down_until = time.monotonic() + outage
            while time.monotonic() < down_until:
                accepted |= drills.submit_batch(api, 5, sleep=0.05)
                time.sleep(1)  # a trickle of submits during the outage
            proxy.restore()
            wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
            result = drills.report(
                db,
                f"workers' PostgreSQL unreachable {outage} s (4 x visibility 5 s)",
                accepted,
                started,
            )
    finally:
        proxy.close()
    result.assert_safe()


_TERMINATE = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE application_name = 'jobq' AND pid <> pg_backend_pid()"""


def test_drill_pg_terminate_backend_of_jobqs_connections(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    # 4 slots a worker and 0.5 s jobs: the drill lasts several rounds of terminations.
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=4)
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS, sleep=0.5)
        terminated, rounds = 0, 0
        deadline = time.monotonic() + 90 + JOBS / 5
        while not drills.all_final(db, accepted) and time.monotonic() < deadline:
            # Every connection jobq holds (claims, completions, heartbeats, the API's) dies.
            terminated += drills.count(db, _TERMINATE)
            rounds += 1
            time.sleep(0.5 + random.random())  # the drill's pace; state is polled
        result = drills.report(
            db, f"pg_terminate_backend of jobq's connections ({rounds}x)", accepted, started
        )
    assert terminated > 0
    # A completion whose commit was lost with its connection runs again: counted, not banned.
    result.assert_safe(duplicates=None)


def _hog_connections(database_url: str, leave: int) -> list[Any]:
    """Open connections until PostgreSQL refuses more, then close `leave` of them: what is
    left for everyone else (jobq's pools, the handlers' own connections) is that many."""
    url = database_url.replace("postgresql+psycopg2://", "postgresql://")
    hogs: list[Any] = []
    while len(hogs) < 500:
        try:
            hogs.append(psycopg2.connect(url, connect_timeout=5))
        except psycopg2.OperationalError:
            break
    for conn in hogs[:leave]:
        conn.close()
    return hogs[leave:]


def test_drill_connection_slots_exhausted(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any
) -> None:
    # The server's max_connections is nearly used up by someone else for 6 s: new
    # connections (pool growth, reconnects, the handlers' own) are refused meanwhile.
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=4)
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        # Attempts are generous: a handler that cannot connect fails its attempt (its own
        # fault, counted), and this drill is about jobq's connections.
        accepted = drills.submit_batch(api, JOBS, sleep=0.2, max_attempts=20)
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM test_executions") >= 4,
            timeout=60,
            what="jobs to start",
        )
        hogs = _hog_connections(database_url, leave=4)
        try:
            time.sleep(6)  # the fault itself
        finally:
            for conn in hogs:
                conn.close()
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
        result = drills.report(
            db, f"max_connections exhausted 6 s ({len(hogs)} taken)", accepted, started
        )
    assert hogs
    result.assert_safe(duplicates=None)


@pytest.mark.parametrize("fault", ["refusing", "hanging"])
def test_drill_sqs_refusing_or_hanging_longer_than_the_visibility(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any, sqs_proxy: Any, fault: str
) -> None:
    # API and workers reach SQS through the proxy; for 7 s, longer than the visibility
    # timeout (5 s), it refuses every connection or accepts and never answers, while 3 s
    # jobs run and clients keep submitting (each answered 201 promptly).
    settings = make_settings(database_url, sqs_endpoint, **FAST)
    settings = settings.model_copy(update={"sqs_endpoint_url": sqs_proxy.endpoint})
    for _ in range(2):
        workers(settings)
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        accepted = drills.submit_batch(api, JOBS // 2, sleep=3)
        wait_for(
            lambda: drills.count(db, "SELECT count(*) FROM test_executions") >= 4,
            timeout=60,
            what="jobs to start",
        )
        sqs_proxy.cut() if fault == "refusing" else sqs_proxy.hang()
        slowest = 0.0
        faulty_until = time.monotonic() + 7
        while time.monotonic() < faulty_until:
            asked = time.monotonic()
            accepted.add(drills.submit(api, {"task": "record", "payload": {"sleep": 0.01}}))
            slowest = max(slowest, time.monotonic() - asked)
            time.sleep(0.2)  # a trickle of submits during the fault
        sqs_proxy.restore()
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
        result = drills.report(
            db,
            f"SQS {fault} 7 s (visibility 5 s; slowest submit {slowest:.2f} s)",
            accepted,
            started,
        )
    assert slowest < 2  # submits never wait on SQS
    result.assert_safe()


def test_drill_one_workers_sqs_path_blackholed_while_postgresql_is_fine(
    database_url: str, sqs_endpoint: str, db: Any, workers: Any, sqs_proxy: Any
) -> None:
    # Worker A reaches SQS through the proxy, worker B directly. A's SQS path goes silent
    # while it runs jobs longer than the visibility timeout: its messages reappear and B
    # receives them, but A still renews the leases in PostgreSQL, records the outcomes
    # (the deletes hang on their own thread) and B never starts a job A holds.
    settings = make_settings(database_url, sqs_endpoint, **FAST, worker_concurrency=4)
    a = workers(settings.model_copy(update={"sqs_endpoint_url": sqs_proxy.endpoint}))
    started = time.monotonic()
    with TestClient(create_app(settings)) as api:
        first = drills.submit_batch(api, 4, sleep=8)
        accepted = set(first)
        running_on_a = "SELECT count(*) FROM test_executions WHERE pid = %s"
        wait_for(lambda: drills.count(db, running_on_a, a.pid) >= 2, timeout=60, what="A's runs")
        sqs_proxy.hang()
        workers(settings)  # B
        accepted |= drills.submit_batch(api, JOBS // 2, sleep=0.05)
        # A's outcomes are committed once its runs end (8 s), not after its hung SQS calls
        # give up (90 s for a DeleteMessageBatch before the after-commit thread).
        wait_for(lambda: drills.all_final(db, first), timeout=40, what="A's outcomes")
        wait_for(lambda: drills.all_final(db, accepted), timeout=120 + JOBS, interval=0.3)
        on_a = drills.count(
            db,
            """SELECT count(*) FROM jobs j JOIN test_executions e ON e.job_id = j.id
               WHERE e.pid = %s AND j.status = 'succeeded' AND j.result->>'pid' = %s""",
            a.pid,
            str(a.pid),
        )
        result = drills.report(db, "one worker's SQS path blackholed", accepted, started)
    assert on_a >= 2  # A's runs were recorded although its SQS hung
    result.assert_safe()
