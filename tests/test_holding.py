"""Holding a job never waits on SQS: outcomes commit while SQS hangs, leases renew on their own
loop and retry within an interval, and a message whose lease lapsed is no longer kept hidden."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from app.errors import DatabaseUnavailable
from app.sqs.queue import Message, make_sqs_client
from app.tasks.registry import JobContext
from tests.faults import Blackhole
from tests.helpers import wait_for
from worker.heartbeat import Heartbeat, VisibilityKeeper
from worker.inflight import InFlight


def _status(db: Any, job_id: str) -> str:
    with db.cursor() as cur:
        cur.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))
        return str(cur.fetchone()[0])


def test_outcomes_are_recorded_while_the_sqs_deletes_hang(
    api: Any, worker_factory: Any, db: Any, settings: Any
) -> None:
    worker = worker_factory()
    with Blackhole() as hole:
        stuck = make_sqs_client(
            settings.model_copy(update={"sqs_endpoint_url": hole.endpoint}),
            read_timeout=60,
            retries=0,
        )
        # Only the calls made after a commit (deletes, fresh retry messages) hang.
        worker.completer.actions.use(worker.sqs.with_client(stuck))
        started = time.monotonic()
        for _ in range(3):
            job = api.post("/jobs", json={"task": "echo"}).json()
            # One after another: each outcome comes after the previous one's hung delete.
            wait_for(
                lambda job=job: _status(db, job["id"]) == "succeeded",
                timeout=15,
                what="the outcome to be committed although the SQS delete hangs",
            )
        assert time.monotonic() - started < 40  # far less than one hung delete (60 s)
        assert worker.inflight.held() == 0  # the slots were freed at commit


def _running_job(db: Any, worker_id: str, lease: float) -> uuid.UUID:
    job_id = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, status, attempts, worker_id,
                                 lease_expires_at, started_at)
               VALUES (%s, 'echo', 3, 'running', 1, %s, now() + %s * interval '1 second',
                       now())""",
            (str(job_id), worker_id, lease),
        )
    return job_id


def _lease_end(db: Any, job_id: uuid.UUID) -> Any:
    with db.cursor() as cur:
        cur.execute("SELECT lease_expires_at FROM jobs WHERE id = %s", (str(job_id),))
        return cur.fetchone()[0]


def _entry(inflight: InFlight, job_id: uuid.UUID, renewed_at: float) -> Any:
    message = Message(job_id, f"receipt-{job_id}", "m", 1, None, "url")
    (entry,) = inflight.admit([message], inflight.reserve(1, batch=1, linger=0, timeout=1))
    entry.ctx = JobContext(job_id, "echo", 1, 3, 0)
    entry.renewed_at = renewed_at
    return entry


class _FlakySessions:
    """The runtime's sessionmaker, refusing to open a transaction while `down` is set."""

    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions
        self.down = threading.Event()

    def begin(self) -> Any:
        if self.down.is_set():
            raise DatabaseUnavailable("simulated outage")
        return self._sessions.begin()


def test_a_failed_renewal_is_retried_within_the_interval(runtime: Any, db: Any) -> None:
    # A 2 s interval: after an 8 s outage the next try must come within half an interval,
    # not after a backoff grown past it (the 5th retry used to wait 8 s).
    job_id = _running_job(db, "w1", 12)
    inflight = InFlight(1)
    _entry(inflight, job_id, time.monotonic())
    sessions = _FlakySessions(runtime.sessions)
    beat = Heartbeat(inflight, sessions, "w1", interval=2.0, lease=12, margin=1)  # type: ignore[arg-type]
    sessions.down.set()
    beat.start()
    try:
        time.sleep(8)  # the outage itself (several failed tries)
        before = _lease_end(db, job_id)
        sessions.down.clear()
        back = time.monotonic()
        wait_for(lambda: _lease_end(db, job_id) > before, timeout=10, what="the renewal")
        assert time.monotonic() - back < 2.0  # half the interval, plus slack for a busy host
    finally:
        beat.stop()


class _RecordingSqs:
    def __init__(self) -> None:
        self.extended: list[list[str]] = []

    def change_visibility_batch(self, messages: list[Message], seconds: float) -> None:
        self.extended.append([m.receipt_handle for m in messages])


def test_a_message_whose_lease_was_not_renewed_is_no_longer_kept_hidden() -> None:
    inflight = InFlight(3)
    now = time.monotonic()
    fresh = _entry(inflight, uuid.uuid4(), now)
    stale = _entry(inflight, uuid.uuid4(), now - 9)  # renewed 9 s ago: lease 10, margin 2
    unclaimed = inflight.admit(
        [Message(uuid.uuid4(), "receipt-new", "m", 1, None, "url")],
        inflight.reserve(1, batch=1, linger=0, timeout=1),
    )[0]
    sqs = _RecordingSqs()
    keeper = VisibilityKeeper(inflight, sqs, interval=1.0, visibility=10, margin=2)  # type: ignore[arg-type]
    keeper.tick()
    (extended,) = sqs.extended
    assert fresh.message.receipt_handle in extended
    assert unclaimed.message.receipt_handle in extended  # being claimed right now
    assert stale.message.receipt_handle not in extended


def test_a_renewal_does_not_wait_for_a_lock_on_the_job_row(runtime: Any, db: Any) -> None:
    # A renewal stuck behind a row lock would stall every other lease of the worker.
    job_id = _running_job(db, "w1", 12)
    inflight = InFlight(1)
    _entry(inflight, job_id, time.monotonic())
    beat = Heartbeat(inflight, runtime.sessions, "w1", interval=1.0, lease=12, margin=1)
    with db.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (str(job_id),))
        began = time.monotonic()
        try:
            with pytest.raises(DatabaseUnavailable):  # a statement timeout: retried soon
                beat.beat()
        finally:
            cur.execute("ROLLBACK")
        assert time.monotonic() - began < 5
