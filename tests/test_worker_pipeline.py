"""Receive batching, pipelined pollers and held DB connections, against real PostgreSQL + SQS."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from app.config import Settings
from app.sqs.queue import Message
from tests.helpers import job_statuses, queue_depth, run_echo_job, wait_for
from worker.inflight import InFlight


def _message(i: int) -> Message:
    return Message(uuid.uuid4(), f"rh-{i}-{uuid.uuid4().hex}", str(i), 1, None, "q")


def _delays(db: Any, ids: list[str], interval: str = "finished_at - created_at") -> list[float]:
    with db.cursor() as cur:
        cur.execute(
            f"SELECT extract(epoch FROM {interval}) FROM jobs WHERE id::text = ANY(%s)", (ids,)
        )
        return [float(r[0]) for r in cur.fetchall()]


# -- slot reservations -----------------------------------------------------------------------


def test_reservations_and_held_messages_never_exceed_the_slots() -> None:
    slots = InFlight(12)
    a = slots.reserve(10, batch=10, linger=0, timeout=1)
    b = slots.reserve(10, batch=10, linger=0, timeout=1)
    assert (a, b) == (10, 2)
    assert slots.reserve(10, batch=10, linger=0, timeout=0.01) == 0  # nothing left
    entries = slots.admit([_message(i) for i in range(3)], a)  # 7 of a's 10 come back
    assert len(entries) == 3 and slots.held() == 3 and slots.free() == 7
    with pytest.raises(ValueError):
        slots.admit([_message(i) for i in range(3)], 2)  # more messages than reserved slots
    slots.admit([], b)
    assert slots.free() == 9


def test_a_busy_worker_waits_for_a_full_batch_of_free_slots() -> None:
    slots = InFlight(10)
    held = slots.admit(
        [_message(i) for i in range(6)], slots.reserve(6, batch=10, linger=0, timeout=1)
    )

    def finish_one_by_one() -> None:
        for entry in held:
            time.sleep(0.02)  # jobs ending at different times (pacing, not synchronisation)
            slots.remove(entry.message)

    finisher = threading.Thread(target=finish_one_by_one)
    finisher.start()
    # Without the linger this returns the 4 slots that are free right now.
    assert slots.reserve(10, batch=10, linger=10, timeout=1) == 10
    finisher.join()


def test_an_idle_worker_reserves_at_once_and_the_linger_is_bounded() -> None:
    slots = InFlight(10)
    began = time.monotonic()
    assert slots.reserve(3, batch=10, linger=10, timeout=1) == 3  # idle: no waiting at all
    assert time.monotonic() - began < 1
    slots.admit([_message(0)], 3)
    began = time.monotonic()
    # Busy and no slot frees up: the linger ends and the 9 free slots are taken.
    assert slots.reserve(10, batch=10, linger=0.2, timeout=1) == 9
    assert time.monotonic() - began < 5


# -- the worker ----------------------------------------------------------------------------


def test_a_busy_worker_receives_and_deletes_full_batches(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    # Jobs of one batch end at different times; without the linger each ending is deleted on
    # its own and frees a slot that is filled by a receive of one or two messages.
    jobs = [{"task": "sleep", "payload": {"seconds": 0.03 * (i % 10)}} for i in range(30)]
    ids = [
        item["job"]["id"] for item in api.post("/jobs/batch", json={"jobs": jobs}).json()["items"]
    ]
    worker = worker_factory(
        settings, run=False, worker_concurrency=10, worker_pollers=1, batch_linger_ms=1000
    )
    wait_for(lambda: queue_depth(worker.sqs)["visible"] == 30, what="all 30 messages queued")
    sizes: list[int] = []
    deletes: list[int] = []
    receive, delete_batch = worker.sqs.receive, worker.sqs.delete_batch

    def recording_receive(*args: Any, **kwargs: Any) -> list[Message]:
        got = receive(*args, **kwargs)
        if got:
            sizes.append(len(got))
        return got

    def recording_delete(messages: list[Message]) -> int:
        deletes.append(len(messages))
        return delete_batch(messages)

    worker.sqs.receive = recording_receive  # type: ignore[method-assign]
    worker.sqs.delete_batch = recording_delete  # type: ignore[method-assign]
    worker.after_commit.use(worker.sqs)  # deletes go through the recording queue too
    worker.start()
    wait_for(
        lambda: set(job_statuses(db, ids).values()) == {"succeeded"},
        timeout=60,
        what="30 jobs done",
    )
    assert sum(sizes) == 30 and len(sizes) <= 4, sizes
    wait_for(lambda: sum(deletes) == 30, what="30 messages deleted")
    assert len(deletes) <= 4, deletes


def test_an_idle_worker_starts_a_new_job_at_once_despite_a_long_linger(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    worker_factory(settings, run=False, worker_concurrency=16, batch_linger_ms=1000).start()
    ids = [run_echo_job(api, db) for _ in range(3)]
    # Neither its receive nor its completion waits for a batch that is not coming.
    assert max(_delays(db, ids, "started_at - created_at")) < 0.5, _delays(db, ids)
    assert max(_delays(db, ids, "finished_at - started_at")) < 0.5, _delays(db, ids)


def test_one_poller_receives_while_another_waits_for_its_claim(
    api: Any, worker_factory: Any, db: Any, database_url: str, settings: Settings
) -> None:
    blocked = api.post("/jobs", json={"task": "echo"}).json()["id"]
    locker = psycopg2.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        with locker.cursor() as cur:  # hold the job's row: its claim waits on the lock
            cur.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (blocked,))
        worker_factory(settings, run=False, worker_concurrency=4, worker_pollers=2).start()

        def claim_waiting() -> bool:
            with db.cursor() as cur:
                cur.execute(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'"""
                )
                return bool(cur.fetchone()[0])

        wait_for(claim_waiting, what="the claim to wait on the row lock")
        # With one receive-and-claim loop nothing is received until that claim returns.
        other = api.post("/jobs", json={"task": "echo"}).json()["id"]
        wait_for(lambda: job_statuses(db, [other]) == {other: "succeeded"}, what="the other job")
        assert job_statuses(db, [blocked]) == {blocked: "queued"}
    finally:
        locker.rollback()
        locker.close()
    wait_for(lambda: job_statuses(db, [blocked]) == {blocked: "succeeded"}, what="the blocked job")
