"""GET /jobs/{id}?wait=N: answered when the job ends, woken by PostgreSQL NOTIFY (a trigger
on jobs), one LISTEN connection per API process, reconnecting when it is lost."""

from __future__ import annotations

import asyncio
import contextlib
import select
import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine

from app.db import make_engine
from app.jobs.notify import CHANNEL, FinalListener, listen_connection
from app.jobs.service import JobService
from tests.helpers import wait_for


def _submit(api: Any, **body: Any) -> str:
    resp = api.post("/jobs", json={"task": "echo", **body})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _set_status(db: Any, job_id: str, status: str) -> None:
    """A writer that is none of jobq's code paths: only the trigger can tell the API."""
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = %s WHERE id = %s", (status, job_id))


@pytest.fixture
def engine(settings: Any) -> Any:
    eng = make_engine(settings.database_url, pool_size=2)
    yield eng
    eng.dispose()


def test_wait_must_be_between_0_and_30_seconds(api: Any) -> None:
    job_id = _submit(api)
    for bad in ("0", "-1", "30.5", "soon", "nan"):
        resp = api.get(f"/jobs/{job_id}", params={"wait": bad})
        assert resp.status_code == 422, bad
        assert resp.json()["error"]["field"] == "wait"
    missing = api.get(f"/jobs/{uuid.uuid4()}", params={"wait": "5"})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"


def test_final_job_answers_at_once(api: Any) -> None:
    job_id = _submit(api)
    assert api.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    started = time.monotonic()
    resp = api.get(f"/jobs/{job_id}", params={"wait": "30"})
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert time.monotonic() - started < 5


def test_timeout_answers_the_job_as_it_is_after_two_reads(api: Any, monkeypatch: Any) -> None:
    job_id = _submit(api)
    # The first long poll starts the process's listener; until it listens, waiters are woken
    # once more when it does (they may have missed a NOTIFY), which would cost a third read.
    api.get(f"/jobs/{job_id}", params={"wait": "0.01"})
    wait_for(api.app.state.jobs._finals.listening.is_set, what="LISTEN")
    reads: list[uuid.UUID] = []
    original = JobService.get

    def counting(self: JobService, jid: uuid.UUID) -> Any:
        reads.append(jid)
        return original(self, jid)

    monkeypatch.setattr(JobService, "get", counting)
    started = time.monotonic()
    resp = api.get(f"/jobs/{job_id}", params={"wait": "1.5"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 200 and resp.json()["status"] == "queued"
    assert elapsed >= 1.4
    # One read before waiting, one after the timeout: the table is not polled meanwhile.
    assert len(reads) == 2


def test_any_writer_wakes_the_waiting_request(api: Any, db: Any) -> None:
    job_id = _submit(api)
    answers: list[Any] = []
    waiter = threading.Thread(
        target=lambda: answers.append(api.get(f"/jobs/{job_id}", params={"wait": "30"}))
    )
    waiter.start()
    finals = api.app.state.jobs._finals
    wait_for(lambda: finals.listening.is_set() and finals.waiting() == 1, what="the long poll")
    written = time.monotonic()
    _set_status(db, job_id, "failed")
    waiter.join(30)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["status"] == "failed"
    assert time.monotonic() - written < 5  # woken, not the 30 s timeout
    assert finals.waiting() == 0


def test_trigger_notifies_final_statuses_only(api: Any, db: Any, database_url: str) -> None:
    job_id = _submit(api)
    listener = _raw_listen(database_url)
    try:
        _set_status(db, job_id, "running")
        _set_status(db, job_id, "running")
        _set_status(db, job_id, "succeeded")
        _set_status(db, job_id, "succeeded")  # no change of status: no second notification
        _set_status(db, job_id, "queued")
        _set_status(db, job_id, "cancelled")
        # Notifications arrive in commit order: once the last is in, none was skipped.
        got = _notifications(listener, count=2)
        assert got == [job_id, job_id]
    finally:
        listener.close()


def _raw_listen(database_url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(database_url.replace("postgresql+psycopg2://", "postgresql://"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"LISTEN {CHANNEL}")
    return conn


def _notifications(conn: Any, *, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while len(got) < count and time.monotonic() < deadline:
        select.select([conn], [], [], deadline - time.monotonic())
        conn.poll()
        got.extend(n.payload for n in conn.notifies)
        conn.notifies.clear()
    # Anything beyond `count` would already be here: one more round trip flushes it.
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    got.extend(n.payload for n in conn.notifies)
    return got


def _woken(listeners: list[FinalListener], job_id: str, db: Any, status: str) -> list[bool]:
    """Register a waiter on each (listening) listener, write the status: who was woken."""

    async def main() -> list[bool]:
        with contextlib.ExitStack() as stack:
            futures = [stack.enter_context(lst.watch(uuid.UUID(job_id))) for lst in listeners]
            _set_status(db, job_id, status)
            done, _ = await asyncio.wait(futures, timeout=10)
            return [f in done for f in futures]

    return asyncio.run(main())


def test_every_process_listens_for_itself(api: Any, db: Any, engine: Engine) -> None:
    """Two listeners (as two API processes have) on one database: one UPDATE wakes both."""
    job_id = _submit(api)
    listeners = [FinalListener(lambda: listen_connection(engine)) for _ in range(2)]
    try:
        for lst in listeners:
            lst.start()
            wait_for(lst.listening.is_set, what="LISTEN")
        assert listeners[0].backend_pid != listeners[1].backend_pid
        assert _woken(listeners, job_id, db, "succeeded") == [True, True]
    finally:
        for lst in listeners:
            lst.close()


def test_listener_reconnects_and_wakes_waiters_it_may_have_missed(
    api: Any, db: Any, engine: Engine
) -> None:
    first, second = _submit(api), _submit(api)
    listener = FinalListener(lambda: listen_connection(engine))
    listener.start()
    try:
        wait_for(listener.listening.is_set, what="LISTEN")
        old_pid = listener.backend_pid

        async def main() -> tuple[bool, bool]:
            with listener.watch(uuid.UUID(first)) as resynced:
                with db.cursor() as cur:
                    cur.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
                # The connection died: a waiter may have missed its NOTIFY, so the new
                # connection wakes it to read its job again.
                await asyncio.wait_for(resynced, 15)
            assert listener.backend_pid != old_pid and listener.listening.is_set()
            with listener.watch(uuid.UUID(second)) as ended:
                _set_status(db, second, "cancelled")
                await asyncio.wait_for(ended, 10)
            return resynced.done(), ended.done()

        assert asyncio.run(main()) == (True, True)
    finally:
        listener.close()
    assert not listener.alive()
