"""`profile` (`--profile`): cost of the building blocks, round trips per job, py-spy stacks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2
import pyspy
from harness import Bench
from measure import log
from roundtrips import round_trips

from phases.limits import delete_batch

Costs = dict[str, dict[str, float]]


def run(bench: Bench) -> dict[str, Any]:
    """Micro costs, round trips, then (if py-spy is installed) the API's and a worker's stacks."""
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    try:
        result["micro_costs"] = micro_costs(bench)
        for k, v in result["micro_costs"].items():
            log(f"{k}: {v['wall_ms']:.2f} ms wall, {v['cpu_ms']:.2f} ms CPU")
    except Exception as exc:  # noqa: BLE001 - the app's internals may change; keep going
        result["micro_costs"] = {"error": repr(exc)}
    result["round_trips"] = round_trips(bench)
    if pyspy.py_spy() is None:
        result["py_spy"] = "py-spy not installed (pip install py-spy)"
        return result
    seconds = 5.0 if bench.plan.quick else 8.0
    result["api"] = pyspy.spy_api(bench, seconds)
    for k, v in result["api"].items():
        log(f"API {k} threads: {json.dumps(v['thread_cpu'])}")
        top = v["gil_samples"].get("self_percent_by_package", [])[:8]
        log(f"py-spy --gil API {k}: {json.dumps(top)}")
    result["worker"] = pyspy.spy_worker(bench, seconds)
    log(f"worker threads: {json.dumps(result['worker']['thread_cpu'])}")
    top = result["worker"]["gil_samples"].get("self_percent_by_package", [])[:8]
    log(f"py-spy --gil worker: {json.dumps(top)}")
    return result


def timer(out: Costs) -> Callable[..., None]:
    """measure(label, fn, n, per=1): wall and CPU ms of fn() (after one warm-up call) / n*per."""

    def measure(label: str, fn: Callable[[], object], n: int, per: int = 1) -> None:
        fn()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        out[label] = {
            "wall_ms": round(1000 * (time.perf_counter() - w0) / (n * per), 3),
            "cpu_ms": round(1000 * (time.process_time() - c0) / (n * per), 3),
        }

    return measure


def micro_costs(bench: Bench) -> Costs:
    """Wall and CPU milliseconds per call of the building blocks, in this process, idle machine.

    CPU is this whole process's (process_time), so the group commit's threads count too.
    """
    from app.config import Settings
    from app.runtime import build_runtime

    queue = bench.new_queue("micro")
    bench.reset_jobs()
    settings = Settings(
        database_url=bench.endpoints.database_url,
        sqs_queue_url=queue[0],
        sqs_dlq_url=queue[1],
        sqs_endpoint_url=bench.endpoints.sqs_endpoint,
    )
    rt = build_runtime(settings)
    out: Costs = {}
    measure = timer(out)
    try:
        sqs_costs(rt, queue[0], measure)
        db_costs(rt, settings.database_url, measure)
        submit_costs(rt, measure)
    finally:
        rt.close()
        bench.reset_jobs()
    return out


def sqs_costs(rt: Any, url: str, measure: Callable[..., None]) -> None:
    """boto3 send, receive and delete calls, through jobq's SqsQueue where jobq uses it."""
    from app.sqs.queue import Outgoing

    def some(k: int) -> list[Outgoing]:
        return [Outgoing(uuid.uuid4(), uuid.uuid4().hex) for _ in range(k)]

    measure("boto3 SendMessageBatch, 1 message", lambda: rt.sqs.send_batch(some(1)), 200)
    measure("boto3 SendMessageBatch, 10 messages", lambda: rt.sqs.send_batch(some(10)), 100)
    for _ in range(60):
        rt.sqs.send_batch(some(10))

    def receive_delete_each() -> None:
        for m in rt.sqs.receive(10, 0):
            rt.sqs.delete(m)

    def receive_delete_batch() -> None:
        client = rt.sqs.client
        msgs = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if msgs:
            delete_batch(client, url, msgs)

    measure("boto3 ReceiveMessage(10) + 10 x DeleteMessage", receive_delete_each, 25)
    measure("boto3 ReceiveMessage(10) + DeleteMessageBatch(10)", receive_delete_batch, 25)


def db_costs(rt: Any, db: str, measure: Callable[..., None]) -> None:
    """A SQLAlchemy transaction, and a raw psycopg2 INSERT + COMMIT."""
    from sqlalchemy import text

    def orm_txn() -> None:
        with rt.sessions.begin() as session:
            session.execute(text("SELECT 1"))

    measure("SQLAlchemy session.begin() + 1 statement + commit (pre-ping)", orm_txn, 300)
    conn = psycopg2.connect(db)
    cur = conn.cursor()

    def raw_insert() -> None:
        cur.execute(
            "INSERT INTO jobs (id, task, status, payload, max_attempts) "
            "VALUES (%s, 'echo', 'queued', '{}'::jsonb, 3)",
            (str(uuid.uuid4()),),
        )
        conn.commit()

    try:
        measure("psycopg2 INSERT + COMMIT", raw_insert, 300)
    finally:
        conn.close()


class NoPublish:
    """A publisher that drops what it is given: the submit costs without SQS."""

    def publish(self, item: Any) -> None:
        """Drop `item`."""


def submit_costs(rt: Any, measure: Callable[..., None]) -> None:
    """What POST /jobs does past the HTTP layer: row_for, then the group commit's INSERT."""
    from app.db import HeldConnections
    from app.jobs import queries
    from app.jobs.schemas import JobCreate
    from app.jobs.service import JobService

    svc = JobService(rt.sessions, rt.registry, NoPublish(), rt.settings)  # type: ignore[arg-type]
    held = HeldConnections(rt.engine)
    req = JobCreate(task="echo", payload={})

    def row() -> dict[str, Any]:
        return svc.row_for(req, trace_id=uuid.uuid4().hex, key=None)

    async def submit() -> None:
        await svc.submit_async(req, trace_id=uuid.uuid4().hex)

    async def burst(k: int) -> None:
        await asyncio.gather(*(submit() for _ in range(k)))

    try:
        measure("JobService.row_for (validate, build the row)", row, 1000)
        measure(
            "row_for + queries.insert_jobs + COMMIT on a held connection (1 row)",
            lambda: held.run(lambda conn: queries.insert_jobs(conn, [row()])),
            300,
        )
        with asyncio.Runner() as runner:
            measure(
                "JobService.submit_async one at a time (group commit, no publishing)",
                lambda: runner.run(submit()),
                300,
            )
            measure(
                "JobService.submit_async 32 at once, per job (group commit, no publishing)",
                lambda: runner.run(burst(32)),
                20,
                per=32,
            )
    finally:
        svc.close()
        held.close()
