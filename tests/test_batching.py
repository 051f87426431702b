"""Batched claims and completions against real PostgreSQL and the SQS server."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from app.jobs import transitions
from app.jobs.states import JobStatus
from app.jobs.transitions import Finish
from app.sqs.queue import Outgoing
from tests.helpers import queue_depth, queue_is_empty, wait_for


def _statuses(db: Any, ids: list[str]) -> dict[str, tuple[str, int]]:
    with db.cursor() as cur:
        cur.execute("SELECT id::text, status, attempts FROM jobs WHERE id::text = ANY(%s)", (ids,))
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


def test_mixed_outcomes_in_one_batch_each_get_their_own_state_and_message_action(
    api: Any, worker_factory: Any, runtime: Any, db: Any, settings: Any
) -> None:
    jobs = (
        [{"task": "echo", "payload": {"i": i}} for i in range(10)]
        + [{"task": "permanent"} for _ in range(10)]
        + [{"task": "flaky", "payload": {"failures": 1}} for _ in range(10)]
    )
    reply = api.post("/jobs/batch", json={"jobs": jobs})
    assert reply.status_code in (200, 201), reply.text
    ids = [item["job"]["id"] for item in reply.json()["items"]]
    # One worker with room for every job: receives, claims and completions are batches.
    worker_factory(settings.model_copy(update={"worker_concurrency": 30}))

    def all_final() -> dict[str, tuple[str, int]] | None:
        got = _statuses(db, ids)
        return got if all(s in ("succeeded", "failed") for s, _ in got.values()) else None

    final = wait_for(all_final, timeout=60, what="all 30 jobs final")
    assert [final[i] for i in ids[:10]] == [("succeeded", 1)] * 10
    assert [final[i] for i in ids[10:20]] == [("failed", 1)] * 10  # not retryable
    assert [final[i] for i in ids[20:]] == [("succeeded", 2)] * 10  # retried once
    echo = api.get(f"/jobs/{ids[3]}").json()
    assert echo["result"] == {"i": 3}
    failed = api.get(f"/jobs/{ids[14]}").json()
    assert "this can never work" in failed["error"]
    history = api.get(f"/jobs/{ids[25]}/attempts").json()
    assert [h["outcome"] for h in history] == ["failed", "succeeded"]
    # Deleted in batches: nothing is left visible or in flight.
    wait_for(lambda: queue_is_empty(runtime.sqs), timeout=30, what="queue drained")


def test_claim_many_claims_each_job_once_and_skips_the_unclaimable(
    api: Any, runtime: Any, db: Any
) -> None:
    ids = [uuid.UUID(api.post("/jobs", json={"task": "echo"}).json()["id"]) for _ in range(4)]
    done, *rest = ids
    with runtime.sessions.begin() as s:
        first = transitions.claim_many(s, [done], "w-a", 30)
        transitions.finish_many(
            s, "w-a", [Finish(first[done], JobStatus.SUCCEEDED, "succeeded", '{"ok": true}')]
        )
    unknown = uuid.uuid4()
    with runtime.sessions.begin() as s:
        # A duplicate id, a finished job and an unknown id in one receive.
        claimed = transitions.claim_many(s, [*rest, rest[0], done, unknown], "w-b", 30)
    assert set(claimed) == set(rest)
    assert all(c.attempt == 1 and not c.lost_previous for c in claimed.values())
    with runtime.sessions.begin() as s:
        again = transitions.claim_many(s, rest, "w-c", 30)
    assert again == {}  # held under a live lease by w-b
    with runtime.sessions.begin() as s:
        # w-c's outcome for w-b's attempt must not be written.
        written = transitions.finish_many(
            s, "w-c", [Finish(claimed[rest[0]], JobStatus.SUCCEEDED, "succeeded")]
        )
    assert written == {}
    assert Counter(s for s, _ in _statuses(db, [str(i) for i in rest]).values()) == {"running": 3}


def _held_by_a_dead_worker(runtime: Any, db: Any, job_id: uuid.UUID) -> None:
    """Claim the job for a worker that then died: running, with its lease already expired."""
    with runtime.sessions.begin() as s:
        transitions.claim_many(s, [job_id], "dead-worker", 30)
    with db.cursor() as cur:
        cur.execute(
            "UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            (str(job_id),),
        )


def test_claim_many_records_the_lost_attempt_of_an_expired_lease(
    api: Any, runtime: Any, db: Any
) -> None:
    job_id = uuid.UUID(api.post("/jobs", json={"task": "echo"}).json()["id"])
    _held_by_a_dead_worker(runtime, db, job_id)
    with runtime.sessions.begin() as s:
        claimed = transitions.claim_many(s, [job_id], "w-new", 30)
    assert claimed[job_id].attempt == 2 and claimed[job_id].lost_previous
    attempts = api.get(f"/jobs/{job_id}/attempts").json()
    assert [(a["attempt"], a["outcome"], a["worker_id"]) for a in attempts] == [
        (1, "lost", "dead-worker")
    ]


def test_duplicates_inside_one_receive_run_the_handler_once(
    api: Any, worker_factory: Any, runtime: Any, db: Any, settings: Any
) -> None:
    job = api.post("/jobs", json={"task": "record"}).json()
    job_id = uuid.UUID(job["id"])
    runtime.sqs.send_batch([Outgoing(job_id) for _ in range(5)])
    worker_factory(settings.model_copy(update={"worker_concurrency": 10}))
    wait_for(
        lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded",
        timeout=30,
        what="job to succeed",
    )
    wait_for(lambda: queue_is_empty(runtime.sqs), timeout=40, what="copies drained")
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM test_executions WHERE job_id = %s", (job["id"],))
        assert cur.fetchone()[0] == 1


def test_worker_never_holds_more_messages_than_its_slots(
    api: Any, worker_factory: Any, runtime: Any, db: Any, settings: Any
) -> None:
    jobs = [{"task": "sleep", "payload": {"seconds": 0.4}} for _ in range(9)]
    reply = api.post("/jobs/batch", json={"jobs": jobs})
    ids = [item["job"]["id"] for item in reply.json()["items"]]
    wait_for(lambda: queue_depth(runtime.sqs)["visible"] == 9, what="all 9 messages queued")
    worker = worker_factory(settings.model_copy(update={"worker_concurrency": 3}))
    held, in_flight, running = [], [], []

    def sample_until_done() -> bool:
        held.append(worker.inflight.held())
        in_flight.append(queue_depth(runtime.sqs)["in_flight"])
        states = _statuses(db, ids)
        running.append(sum(1 for s, _ in states.values() if s == "running"))
        return all(s == "succeeded" for s, _ in states.values())

    wait_for(sample_until_done, timeout=60, interval=0.05, what="all 9 jobs done")
    assert max(held) <= 3 and max(running) <= 3, (held, running)
    # A slot frees when the outcome commits; the message's delete follows on the
    # after-commit thread, so SQS may briefly count a finished job's message beside the 3
    # held ones. Never a second receive's worth: that would be prefetching past the slots.
    assert max(in_flight) <= 3 + 3, in_flight
    assert max(running) >= 2  # it did run jobs side by side


def test_take_batch_drains_what_is_waiting_up_to_the_limit_and_honours_the_sentinel() -> None:
    import queue

    from app.loops import take_batch

    q: queue.SimpleQueue[int | None] = queue.SimpleQueue()
    for i in range(5):
        q.put(i)
    assert take_batch(q, 3) == ([0, 1, 2], False)
    assert take_batch(q, 10) == ([3, 4], False)
    q.put(5)
    q.put(None)
    q.put(6)
    assert take_batch(q, 10) == ([5], True)
    q.put(None)
    assert take_batch(q, 10) == ([6], True)
    q.put(None)
    assert take_batch(q, 10) == ([], True)


def test_delivery_that_missed_an_expiring_lease_comes_back_instead_of_being_deleted(
    api: Any, runtime: Any, db: Any
) -> None:
    from worker.inflight import Entry
    from worker.runner import Worker

    job_id = uuid.UUID(api.post("/jobs", json={"task": "echo"}).json()["id"])
    message = wait_for(lambda: next(iter(runtime.sqs.receive(1, 1)), None), what="the message")
    # The lease expired after this worker's claim failed and before it looked at the job.
    _held_by_a_dead_worker(runtime, db, job_id)
    Worker(runtime).dispatch._unclaimed(Entry(message))
    again = wait_for(
        lambda: next(iter(runtime.sqs.receive(1, 1)), None), timeout=15, what="redelivery"
    )
    assert again.job_id == job_id


def _indexes_and_seq_scans(plan: Any) -> tuple[set[str], set[str]]:
    indexes: set[str] = set()
    seq: set[str] = set()
    if isinstance(plan, dict):
        if "Index Name" in plan:
            indexes.add(plan["Index Name"])
        if plan.get("Node Type") == "Seq Scan":
            seq.add(plan.get("Relation Name", ""))
        children = plan.values()
    elif isinstance(plan, list):
        children = plan
    else:
        return indexes, seq
    for child in children:
        i, s = _indexes_and_seq_scans(child)
        indexes |= i
        seq |= s
    return indexes, seq


def test_claim_finish_and_heartbeat_find_jobs_by_primary_key_on_stale_statistics(
    runtime: Any, db: Any
) -> None:
    import datetime

    from sqlalchemy import bindparam, text

    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, status, payload, max_attempts)
               SELECT gen_random_uuid(), 'echo', 'succeeded', '{}', 3
               FROM generate_series(1, 3000)"""
        )
        cur.execute("ANALYZE jobs")
        # A fresh backlog the statistics know nothing of: the planner thinks few are queued.
        cur.execute("UPDATE jobs SET status = 'queued'")
        cur.execute("SELECT id FROM jobs ORDER BY id LIMIT 10")
        ids = [str(r[0]) for r in cur.fetchall()]
    now = datetime.datetime.now(datetime.UTC)
    statements = {
        "claim": (
            transitions._CLAIM,
            {"ids": ids, "worker": "w", "lease": 30, "margin": 0, "max_crashes": 3},
        ),
        "finish": (
            transitions._FINISH,
            {
                "ids": ids,
                "statuses": ["succeeded"] * 10,
                "results": [None] * 10,
                "errors": [None] * 10,
                "tracebacks": [None] * 10,
                "attempts": [1] * 10,
                "outcomes": ["succeeded"] * 10,
                "started": [now] * 10,
                "counts": [0] * 10,
                "delays": [0.0] * 10,
                "dead": [False] * 10,
                "worker": "w",
            },
        ),
        "heartbeat": (transitions._EXTEND_LEASES, {"ids": ids, "worker": "w", "lease": 30}),
    }
    with runtime.engine.connect() as conn:
        for name, (stmt, params) in statements.items():
            explain = text("EXPLAIN (FORMAT JSON) " + stmt.text)
            if name == "heartbeat":  # its id list is an expanding IN
                explain = explain.bindparams(bindparam("ids", expanding=True))
            plan = conn.execute(explain, params).scalar_one()
            indexes, seq = _indexes_and_seq_scans(plan)
            assert "ix_jobs_status_created" not in indexes and "jobs" not in seq, (name, plan)
        conn.rollback()


class _RecordingSqs:
    """Records send/delete calls; sends of the listed job ids fail."""

    def __init__(self, failing: set[uuid.UUID]) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.failing = failing

    def send_batch(self, items: list[Outgoing]) -> list[uuid.UUID]:
        from app.errors import QueueUnavailable

        self.calls.append(("send", [i.job_id for i in items]))
        if any(i.job_id in self.failing for i in items):
            raise QueueUnavailable("send refused")
        return [i.job_id for i in items]

    def delete_batch(self, messages: list[Any]) -> int:
        self.calls.append(("delete", list(messages)))
        return 0


def test_after_commit_merges_queued_deletes_and_a_failed_send_keeps_only_its_own() -> None:
    from app.sqs.queue import Message
    from worker.after_commit import AfterCommit, Settle, merged

    def msg(n: int) -> Message:
        return Message(uuid.uuid4(), f"r{n}", f"m{n}", 1, None, "q")

    published: list[uuid.UUID] = []
    plain = [Settle([], [msg(i), msg(i + 10)], published.extend) for i in range(3)]
    retry = Outgoing(uuid.uuid4())
    broken = Outgoing(uuid.uuid4())
    with_send = Settle([retry], [msg(20)], published.extend)
    failing = Settle([broken], [msg(21)], published.extend)
    other: list[str] = []
    actions = [plain[0], with_send, lambda sqs: other.append("ran"), plain[1], failing, plain[2]]
    sqs = _RecordingSqs({broken.job_id})
    after = AfterCommit(sqs)  # type: ignore[arg-type]
    for action in merged(actions):  # type: ignore[arg-type]
        after._do(action)
    deletes = [c[1] for c in sqs.calls if c[0] == "delete"]
    # The six plain deletes in one call; the batch with a sent retry deleted after its send;
    # the batch whose send failed kept its message (it comes back).
    assert sorted(m.receipt_handle for m in deletes[-1]) == sorted(
        m.receipt_handle for s in plain for m in s.deletes
    )
    assert [m.receipt_handle for m in deletes[0]] == ["r20"]
    assert len(deletes) == 2
    assert other == ["ran"] and published == [retry.job_id]
