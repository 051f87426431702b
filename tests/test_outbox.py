"""No lost jobs between PostgreSQL and SQS: accepted while SQS is down, delivered after."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.cli.dev import SqsServer
from app.outbox.dispatcher import Dispatcher
from tests.conftest import make_settings
from tests.helpers import scalar, wait_for


def test_jobs_accepted_while_sqs_is_down_are_delivered_when_it_returns(
    db: Any, database_url: str, worker_factory: Any
) -> None:
    # A server of our own, so stopping it does not disturb other tests.
    server = SqsServer().start()
    try:
        settings = make_settings(database_url, server.endpoint, dispatch_after_seconds=0.5)
        with TestClient(create_app(settings)) as api:
            before = [
                api.post("/jobs", json={"task": "echo", "payload": {"i": i}}) for i in range(3)
            ]
            server.stop()
            during = [
                api.post("/jobs", json={"task": "echo", "payload": {"i": i}}) for i in range(3, 15)
            ]
            assert all(r.status_code == 201 for r in before + during)
            ids = {r.json()["id"] for r in before + during}
            # While SQS is down nothing is lost: every accepted job is a queued row.
            assert scalar(db, "SELECT count(*) FROM jobs WHERE status = 'queued'") == 15
            server = SqsServer(port=server.port).start()
            worker_factory(settings)

            def all_succeeded() -> bool:
                return scalar(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'") == 15

            wait_for(all_succeeded, timeout=60, what="every job to succeed after SQS came back")
            assert scalar(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == 0
            assert {j["id"] for j in api.get("/jobs", params={"limit": 50}).json()["items"]} == ids
    finally:
        server.stop()


def test_dispatcher_publishes_only_overdue_unconfirmed_jobs(
    db: Any, settings: Any, runtime: Any
) -> None:
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, updated_at)
               SELECT gen_random_uuid(), 'echo', 3, now() - interval '1 minute'
               FROM generate_series(1, 25)"""
        )
        cur.execute(
            "INSERT INTO jobs (id, task, max_attempts) VALUES (gen_random_uuid(), 'echo', 3)"
        )
    dispatcher = Dispatcher(runtime.sqs, runtime.sessions, after_seconds=30, interval_seconds=1)
    assert dispatcher.run_once() == 25
    assert dispatcher.run_once() == 0  # confirmed rows are not sent again
    assert scalar(db, "SELECT count(*) FROM jobs WHERE published_at IS NULL") == 1
    attrs = runtime.sqs.attributes()
    assert int(attrs["ApproximateNumberOfMessages"]) == 25


def test_concurrent_dispatchers_do_not_double_publish(db: Any, settings: Any, runtime: Any) -> None:
    import threading

    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, updated_at)
               SELECT gen_random_uuid(), 'echo', 3, now() - interval '1 minute'
               FROM generate_series(1, 40)"""
        )
    sent: list[int] = []
    dispatchers = [
        Dispatcher(
            runtime.sqs, runtime.sessions, after_seconds=1, interval_seconds=1, batch_size=10
        )
        for _ in range(3)
    ]

    def drain(d: Dispatcher) -> None:
        while (n := d.run_once()) > 0:
            sent.append(n)

    threads = [threading.Thread(target=drain, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(sent) == 40
    assert int(runtime.sqs.attributes()["ApproximateNumberOfMessages"]) == 40
