"""jobq.enqueue: a job written inside the caller's own transaction (issue 16, part 3)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

import jobq
from app.catalogue import store
from app.catalogue.wiring import definitions
from app.config import Settings
from app.db import normalize_url
from app.outbox.dispatcher import build_dispatcher
from app.runtime import build_runtime
from app.tasks.registry import Registry
from jobq import transaction
from tests.helpers import job_statuses, wait_for


class Order(BaseModel):
    order_id: int


ORDERS_DDL = "CREATE TABLE IF NOT EXISTS test_orders (id serial PRIMARY KEY, item text)"


@pytest.fixture
def engine(settings: Settings, db: Any) -> Iterator[Engine]:
    """A SQLAlchemy engine of "the application" on jobq's database, with a table of its own."""
    eng = create_engine(normalize_url(settings.database_url))
    with eng.begin() as conn:
        conn.execute(text(ORDERS_DDL))
        conn.execute(text("TRUNCATE test_orders"))
    yield eng
    eng.dispose()


@pytest.fixture(autouse=True)
def _enqueue_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """jobq.enqueue reads its limits (JOBQ_MAX_ATTEMPTS_CEILING, ...) from the environment
    once per process; here, from this test's settings."""
    monkeypatch.setattr(transaction._State, "settings", settings)
    monkeypatch.setattr(transaction._State, "catalogue", None)


def _raw(settings: Settings) -> Any:
    url = make_url(settings.database_url).set(drivername="postgresql")
    return psycopg2.connect(url.render_as_string(False))


def _published_at(db: Any, job_id: str) -> Any:
    with db.cursor() as cur:
        cur.execute("SELECT published_at FROM jobs WHERE id = %s", (job_id,))
        row = cur.fetchone()
    return row and row[0]


def test_committed_job_is_published_at_commit_and_runs(
    settings: Settings, engine: Engine, db: Any, worker_factory: Any
) -> None:
    # The periodic re-publish waits 60 s here: only the NOTIFY can publish the job in time.
    slow = settings.model_copy(update={"dispatch_after_seconds": 60.0})
    runtime = build_runtime(slow)
    dispatcher = build_dispatcher(runtime, slow)
    dispatcher.start()
    try:
        assert dispatcher.wakeup is not None
        wait_for(dispatcher.wakeup.listening.is_set, what="the dispatcher to LISTEN")
        worker_factory()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO test_orders (item) VALUES ('book')"))
            job = jobq.enqueue(conn, "echo", {"order": "book"})
            assert job.created and job.status == "queued"
            # Not visible to anyone else before the commit.
            assert job_statuses(db, [str(job.id)]) == {}
        committed = time.monotonic()
        wait_for(lambda: _published_at(db, str(job.id)), timeout=5, what="publish")
        latency = time.monotonic() - committed
        assert latency < 2.0, f"published {latency:.2f} s after commit"
        wait_for(lambda: job_statuses(db, [str(job.id)]) == {str(job.id): "succeeded"})
    finally:
        dispatcher.stop()
        runtime.close()


def test_rolled_back_transaction_leaves_no_job_and_no_message(
    settings: Settings, engine: Engine, db: Any, runtime: Any
) -> None:
    conn = _raw(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO test_orders (item) VALUES ('lamp')")
        job = jobq.enqueue(conn, "echo", {"order": "lamp"})
        conn.rollback()
    finally:
        conn.close()
    dispatcher = build_dispatcher(runtime, settings)
    dispatcher.start()
    try:
        assert dispatcher.wakeup is not None
        wait_for(dispatcher.wakeup.listening.is_set, what="the dispatcher to LISTEN")
        assert dispatcher.run_pass() == 0
    finally:
        dispatcher.stop()
    assert job_statuses(db, [str(job.id)]) == {}
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM test_orders")
        assert cur.fetchone()[0] == 0
    assert runtime.sqs.receive(10, 1) == []


def test_crash_between_commit_and_publish_is_still_delivered(
    settings: Settings, engine: Engine, db: Any, runtime: Any, worker_factory: Any
) -> None:
    # No dispatcher is listening when the transaction commits (as if it had crashed): the
    # NOTIFY is lost, and the periodic pass over unpublished rows sends the job later.
    with Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO test_orders (item) VALUES ('pen')"))
        job = jobq.enqueue(session, "echo", {"order": "pen"})
    assert _published_at(db, str(job.id)) is None
    worker_factory()
    dispatcher = build_dispatcher(runtime, settings)
    dispatcher.start()
    try:
        wait_for(lambda: job_statuses(db, [str(job.id)]) == {str(job.id): "succeeded"})
    finally:
        dispatcher.stop()


def test_validation_and_options_match_the_api(settings: Settings, engine: Engine) -> None:
    with engine.begin() as conn:
        with pytest.raises(jobq.InvalidInput) as unknown:
            jobq.enqueue(conn, "no_such_task", {})
        assert unknown.value.field == "task" and "echo" in unknown.value.message
        with pytest.raises(jobq.InvalidInput) as bad:
            jobq.enqueue(conn, "sleep", {"seconds": "long"})
        assert bad.value.field == "payload.seconds" and bad.value.status == 422
        with pytest.raises(jobq.InvalidInput) as ceiling:
            jobq.enqueue(conn, "echo", {}, max_attempts=1000)
        assert ceiling.value.field == "max_attempts"
        with pytest.raises(jobq.InvalidInput) as priority:
            jobq.enqueue(conn, "echo", {}, priority="urgent")
        assert priority.value.field == "priority"
        later = jobq.enqueue(conn, "echo", {}, delay_seconds=3600, priority="low", max_attempts=2)
        row = conn.execute(
            text("SELECT status, priority, max_attempts, run_at FROM jobs WHERE id = :id"),
            {"id": later.id},
        ).one()
    assert later.status == "scheduled"
    assert (row.status, row.priority, row.max_attempts) == ("scheduled", "low", 2)
    assert row.run_at is not None


def test_idempotency_key_returns_the_same_job_or_conflicts(
    settings: Settings, engine: Engine, db: Any
) -> None:
    with engine.begin() as conn:
        first = jobq.enqueue(conn, "echo", {"n": 1}, idempotency_key="order-7")
    with engine.begin() as conn:
        again = jobq.enqueue(conn, "echo", {"n": 1}, idempotency_key="order-7")
        with pytest.raises(jobq.Conflict) as conflict:
            jobq.enqueue(conn, "echo", {"n": 2}, idempotency_key="order-7")
    assert conflict.value.field == "idempotency_key"
    assert (again.id, again.created, first.created) == (first.id, False, True)
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE idempotency_key = 'order-7'")
        assert cur.fetchone()[0] == 1


def test_autocommit_connection_is_refused(settings: Settings, db: Any) -> None:
    conn = _raw(settings)
    conn.autocommit = True
    try:
        with pytest.raises(TypeError, match="autocommit"):
            jobq.enqueue(conn, "echo", {})
    finally:
        conn.close()


def test_a_task_only_workers_know_is_validated_from_the_catalogue(
    settings: Settings, engine: Engine
) -> None:
    # Published by some worker image; this process has no code for it.
    name = f"remote_{uuid.uuid4().hex[:8]}"
    registry = Registry()
    registry.register(name, payload_model=Order, max_attempts=4)(lambda payload, ctx: None)
    with Session(engine) as session, session.begin():
        store.publish(session, definitions(registry, "orders 2.0"))
    with engine.begin() as conn:
        with pytest.raises(jobq.InvalidInput) as bad:
            jobq.enqueue(conn, name, {"order_id": "seven"})
        assert bad.value.field == "payload.order_id"
        job = jobq.enqueue(conn, name, {"order_id": 7})
        attempts = conn.execute(
            text("SELECT max_attempts FROM jobs WHERE id = :id"), {"id": job.id}
        ).scalar()
    assert attempts == 4  # the task's default, from the catalogue
