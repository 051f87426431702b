"""Delivery owned by jobq: attempts independent of SQS, infrastructure faults cost nothing, one
bad job harms no other, never two holders at once. Real PostgreSQL and SQS server throughout."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from app.errors import JobqError
from app.jobs import transitions
from app.jobs.states import JobStatus
from app.jobs.transitions import Claimed, Finish
from app.sqs.queue import Outgoing, ensure_queues, make_sqs_client
from tests.conftest import make_settings
from tests.faults import Blackhole, Proxy, postgres_socket
from tests.helpers import rows, wait_for, wait_for_status


def _executions(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return rows(
        db,
        "SELECT pid, started_at, finished_at FROM test_executions WHERE job_id = %s ORDER BY id",
        job_id,
    )


def test_max_attempts_one_or_two_ends_failed_and_dead_lettered(
    api: Any, worker_factory: Any
) -> None:
    worker_factory()
    for n in (1, 2):
        job = api.post("/jobs", json={"task": "fail", "max_attempts": n}).json()
        done = wait_for_status(api, job["id"])
        assert done["status"] == "failed" and done["attempts"] == n
        assert done["dead_lettered_at"] is not None  # one meaning, whatever max_attempts is


def test_a_dead_lettered_job_that_never_ran_goes_back_to_its_queue(
    api: Any, worker_factory: Any, runtime: Any, db: Any
) -> None:
    # A message SQS dead-lettered while the job never ran (e.g. PostgreSQL was down for every
    # receive) must not fail the job: the DLQ consumer sends it back, counted.
    job_id = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (id, task, max_attempts, published_at) VALUES (%s, 'echo', 3, now())",
            (str(job_id),),
        )
    runtime.sqs.client.send_message(
        QueueUrl=runtime.sqs.dlq_url, MessageBody=json.dumps({"job_id": str(job_id)})
    )
    worker_factory()
    with db.cursor() as cur:
        wait_for(
            lambda: (
                rows(db, "SELECT status FROM jobs WHERE id = %s", str(job_id)) == [("succeeded",)]
            ),
            what="the redelivered job to run",
        )
        cur.execute("SELECT redeliveries, dead_lettered_at FROM jobs WHERE id = %s", (str(job_id),))
        assert cur.fetchone() == (1, None)


def test_a_duplicate_during_a_long_run_never_fails_the_job(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    # maxReceiveCount 2: the duplicate reaches the DLQ long before the run ends.
    settings = make_settings(database_url, sqs_endpoint, visibility_timeout_seconds=5)
    client = make_sqs_client(settings)
    name = f"jobq-dup-{uuid.uuid4().hex[:8]}"
    url, dlq = ensure_queues(client, name, f"{name}-dlq", max_receive_count=2, visibility_timeout=5)
    settings = settings.model_copy(update={"sqs_queue_url": url, "sqs_dlq_url": dlq})
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(settings)) as api:
        worker_factory(settings)
        job = api.post("/jobs", json={"task": "cooperative", "payload": {"seconds": 18}}).json()
        wait_for(lambda: _executions(db, job["id"]), what="the run to start")
        for _ in range(2):
            client.send_message(QueueUrl=url, MessageBody=json.dumps({"job_id": job["id"]}))
        done = wait_for_status(api, job["id"], timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["failures"] == 0
    assert len(_executions(db, job["id"])) == 1


def test_a_batch_postgresql_refuses_is_written_row_by_row(
    runtime: Any, db: Any, settings: Any
) -> None:
    from app.db import HeldConnections
    from worker.completer import Completer, Completion
    from worker.executor import Outcome

    ids = [uuid.uuid4() for _ in range(4)]
    with db.cursor() as cur:
        for i in ids:
            cur.execute(
                "INSERT INTO jobs (id, task, max_attempts) VALUES (%s, 'echo', 3)", (str(i),)
            )
    held = HeldConnections(runtime.engine)
    claimed = held.run(lambda c: transitions.claim_many(c, ids, "w1", 30))
    completer = Completer(
        held, runtime.sqs, "w1", backoff_for=lambda task: settings.default_backoff
    )
    # The messages are stand-ins: SQS refuses their deletes, which the completer tolerates.
    outcomes = [Outcome(result='{"ok": 1}')] * 3 + [Outcome(result="{not json")]
    batch = [
        Completion(_message(runtime, i), claimed[i], outcome, 3)
        for i, outcome in zip(ids, outcomes, strict=True)
    ]
    statuses = completer.complete_all(batch)
    held.close()
    assert statuses == ["succeeded"] * 3 + ["failed"]
    (error,) = rows(db, "SELECT error FROM jobs WHERE id = %s", str(ids[3]))[0]
    assert "outcome could not be stored" in error


def _message(runtime: Any, job_id: uuid.UUID) -> Any:
    from app.sqs.queue import Message

    return Message(job_id, f"receipt-{job_id}", "m", 1, None, runtime.sqs.url)


def test_odd_outcomes_never_disturb_their_batch_mates(
    api: Any, worker_factory: Any, db: Any
) -> None:
    worker_factory(worker_concurrency=16)
    odd = ["nan", "nul", "deep", "raise_badstr", "raise_nul", "set", "raise_base"]
    odd_ids = [
        api.post("/jobs", json={"task": "odd", "payload": {"kind": k}}).json()["id"] for k in odd
    ]
    ordinary = [api.post("/jobs", json={"task": "record"}).json()["id"] for _ in range(40)]
    for job_id in ordinary:
        done = wait_for_status(api, job_id)
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
        assert len(_executions(db, job_id)) == 1  # none re-ran
    for job_id in odd_ids:
        assert wait_for_status(api, job_id)["status"] in {"failed", "retrying", "succeeded"}
    assert all(api.get(f"/jobs/{j}").json()["error"] for j in odd_ids)


def test_a_cooperative_handler_cancelled_at_shutdown_is_interrupted_not_succeeded(
    api: Any, worker_factory: Any, db: Any
) -> None:
    worker = worker_factory()
    job = api.post("/jobs", json={"task": "cooperative", "payload": {"seconds": 60}}).json()
    wait_for(lambda: _executions(db, job["id"]), what="the run to start")
    worker.stop(grace=2)
    current = api.get(f"/jobs/{job['id']}").json()
    assert current["status"] == "retrying" and current["failures"] == 0
    outcomes = [a["outcome"] for a in api.get(f"/jobs/{job['id']}/attempts").json()]
    assert outcomes == ["interrupted"]
    # Another worker runs it again (the interruption cost no attempt).
    with db.cursor() as cur:
        cur.execute("""UPDATE jobs SET payload = '{"seconds": 0}' WHERE id = %s""", (job["id"],))
    worker_factory()
    done = wait_for_status(api, job["id"], timeout=60)
    assert (done["status"], done["attempts"], done["failures"]) == ("succeeded", 2, 0)


def test_a_worker_that_cannot_renew_its_lease_stops_the_job_before_the_lease_ends(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, visibility_timeout_seconds=8)
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(settings)) as api:
        first = worker_factory(settings)

        def no_renewal() -> None:
            raise JobqError("leases cannot be renewed (simulated partition)")

        first.heartbeat.beat = no_renewal  # type: ignore[method-assign]
        job = api.post("/jobs", json={"task": "cooperative", "payload": {"seconds": 30}}).json()
        wait_for(lambda: _executions(db, job["id"]), what="the run to start")
        first.consumer.signal_stop()  # the partitioned worker takes nothing new
        worker_factory(settings)  # a second worker, ready to take the job over
        done = wait_for_status(api, job["id"], timeout=60)
    assert done["status"] == "succeeded"
    runs = _executions(db, job["id"])
    assert len(runs) == 2
    (_, _, first_end), (_, second_start, _) = runs
    assert first_end is not None and first_end < second_start  # never two holders at once
    outcomes = [a["outcome"] for a in api_attempts(db, job["id"])]
    assert outcomes[0] == "interrupted"


def api_attempts(db: Any, job_id: str) -> list[dict[str, Any]]:
    """The attempt rows of a job, oldest first."""
    found = rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s ORDER BY id", job_id)
    return [{"outcome": r[0]} for r in found]


def test_leases_are_renewed_while_sqs_hangs(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any, settings: Any, api: Any
) -> None:
    worker = worker_factory()
    hole = Blackhole()
    try:
        from app.sqs.queue import SqsQueue

        stuck = make_sqs_client(
            settings.model_copy(update={"sqs_endpoint_url": hole.endpoint}),
            read_timeout=60,
            retries=0,
        )
        worker.visibility._sqs = worker.sqs.with_client(stuck)  # its SQS calls now hang
        assert isinstance(worker.visibility._sqs, SqsQueue)
        job = api.post("/jobs", json={"task": "cooperative", "payload": {"seconds": 15}}).json()
        wait_for(lambda: _executions(db, job["id"]), what="the run to start")
        before = rows(db, "SELECT lease_expires_at FROM jobs WHERE id = %s", job["id"])[0][0]
        wait_for(
            lambda: (
                rows(db, "SELECT lease_expires_at FROM jobs WHERE id = %s", job["id"])[0][0]
                > before
            ),
            timeout=15,
            what="the lease to be renewed although SQS hangs",
        )
    finally:
        hole.close()


@pytest.fixture
def pg_proxy(database_url: str) -> Any:
    proxy = Proxy(postgres_socket(database_url))
    yield proxy
    proxy.close()


def test_workers_stop_receiving_while_postgresql_is_down_and_resume(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any, pg_proxy: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, visibility_timeout_seconds=5)
    worker_settings = settings.model_copy(
        update={"database_url": pg_proxy.database_url(database_url)}
    )
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(settings)) as api:
        pg_proxy.cut()
        worker = worker_factory(worker_settings)
        ids = [api.post("/jobs", json={"task": "echo"}).json()["id"] for _ in range(5)]
        wait_for(lambda: not worker.gate.is_open, what="the worker to stop receiving")
        # The fault itself lasts a set time: longer than maxReceiveCount (4) x visibility
        # (5 s), after which every message would have been dead-lettered without the gate.
        time.sleep(25)
        pg_proxy.restore()
        for job_id in ids:
            done = wait_for_status(api, job_id, timeout=60)
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
            assert done["dead_lettered_at"] is None


def test_an_isolated_run_finds_the_poison_job(
    api: Any, worker_factory: Any, db: Any, runtime: Any
) -> None:
    # Two jobs whose previous run was lost with their worker: one of them is the culprit.
    ids = [uuid.uuid4(), uuid.uuid4()]
    with db.cursor() as cur:
        for i, payload in zip(ids, ({"crash_attempts": 99}, {}), strict=True):
            cur.execute(
                """INSERT INTO jobs (id, task, payload, max_attempts, status, attempts, worker_id,
                                     lease_expires_at, published_at)
                   VALUES (%s, 'record', %s, 3, 'running', 1, 'dead-worker',
                           now() - interval '1 minute', now())""",
                (str(i), json.dumps(payload)),
            )
    runtime.sqs.send_batch([Outgoing(i) for i in ids])
    worker_factory()
    poison, ordinary = (wait_for_status(api, str(i), timeout=60) for i in ids)
    assert ordinary["status"] == "succeeded" and ordinary["crashes"] == 1
    assert poison["status"] == "failed" and poison["dead_lettered_at"] is not None
    assert "crashed its runner" in poison["error"]
    outcomes = [a["outcome"] for a in api.get(f"/jobs/{ids[0]}/attempts").json()]
    assert outcomes == ["lost", "crashed"]


def test_a_lost_run_is_counted_as_a_crash_not_a_failure(runtime: Any, db: Any) -> None:
    job_id = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, status, attempts, worker_id,
                                 lease_expires_at)
               VALUES (%s, 'echo', 1, 'running', 1, 'w0', now() - interval '1 minute')""",
            (str(job_id),),
        )
    from app.db import HeldConnections

    held = HeldConnections(runtime.engine)
    claimed: Claimed | None = held.run(
        lambda c: transitions.claim(c, job_id, "w1", 30, margin=5, max_crashes=3)
    )
    assert claimed is not None and claimed.lost_previous and claimed.failures == 0
    written = held.run(
        lambda c: transitions.finish_many(
            c, "w1", [Finish(claimed, JobStatus.SUCCEEDED, "succeeded", result="1")]
        )
    )
    held.close()
    assert written == {job_id: JobStatus.SUCCEEDED}
    assert rows(db, "SELECT crashes, failures FROM jobs WHERE id = %s", str(job_id)) == [(1, 0)]


def test_a_new_claim_waits_for_the_lease_margin(runtime: Any, db: Any) -> None:
    job_id = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, status, attempts, worker_id,
                                 lease_expires_at)
               VALUES (%s, 'echo', 3, 'running', 1, 'w0', now() - interval '2 seconds')""",
            (str(job_id),),
        )
    from app.db import HeldConnections

    held = HeldConnections(runtime.engine)
    try:
        assert held.run(lambda c: transitions.claim(c, job_id, "w1", 30, margin=5)) is None
        assert held.run(lambda c: transitions.claim(c, job_id, "w1", 30, margin=1)) is not None
    finally:
        held.close()
