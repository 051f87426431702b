"""`limits`: what PostgreSQL and the SQS server do raw, with no jobq code in between."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg2
from harness import Bench
from measure import log


def run(bench: Bench) -> dict[str, Any]:
    """INSERT+COMMIT rate (1 and 8 connections), SendMessageBatch and receive+delete rates."""
    seconds = bench.plan.limit_seconds
    db = bench.endpoints.database_url
    bench.reset_jobs()
    one = raw_insert_rate(db, seconds, connections=1)
    log(f"raw INSERT+COMMIT, 1 connection: {one:,.0f}/s")
    eight = raw_insert_rate(db, seconds, connections=8)
    log(f"raw INSERT+COMMIT, 8 connections: {eight:,.0f}/s")
    bench.reset_jobs()
    url = bench.new_queue("raw", redrive=False)[0]
    client = bench.measured_sqs()
    n = bench.plan.sqs_limit_messages
    send = raw_send_rate(client, url, n)
    log(f"raw SendMessageBatch: {send:,.0f} msgs/s")
    recv = raw_receive_delete_rate(client, url, n, batch_delete=True)
    log(f"raw ReceiveMessage + DeleteMessageBatch: {recv:,.0f} msgs/s")
    raw_send_rate(client, url, n // 2)
    recv1 = raw_receive_delete_rate(client, url, n // 2, batch_delete=False)
    log(f"raw ReceiveMessage + DeleteMessage (one per message): {recv1:,.0f} msgs/s")
    return {
        "insert_commit_per_s": one,
        "insert_commit_8conn_per_s": eight,
        "sqs_send_batch_msgs_per_s": send,
        "sqs_receive_delete_batch_msgs_per_s": recv,
        "sqs_receive_delete_single_msgs_per_s": recv1,
    }


def raw_insert_rate(url: str, seconds: float, connections: int = 1) -> float:
    """Single-row INSERT INTO jobs + COMMIT per transaction, psycopg2, `connections` threads."""
    counts = [0] * connections
    start_barrier = threading.Barrier(connections + 1)
    stop = threading.Event()

    def worker(k: int) -> None:
        conn = psycopg2.connect(url)
        cur = conn.cursor()
        start_barrier.wait()
        while not stop.is_set():
            cur.execute(
                "INSERT INTO jobs (id, task, status, payload, max_attempts, trace_id) "
                "VALUES (%s, 'echo', 'queued', '{}'::jsonb, 3, %s)",
                (str(uuid.uuid4()), uuid.uuid4().hex),
            )
            conn.commit()
            counts[k] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    start_barrier.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def raw_send_rate(client: Any, url: str, n: int) -> float:
    """Messages per second sent with SendMessageBatch (10 per call, one caller)."""
    from app.sqs.queue import encode_body

    t0 = time.perf_counter()
    for start in range(0, n, 10):
        entries = [
            {"Id": str(i), "MessageBody": encode_body(uuid.uuid4())}
            for i in range(min(10, n - start))
        ]
        client.send_message_batch(QueueUrl=url, Entries=entries)
    return n / (time.perf_counter() - t0)


def delete_batch(client: Any, url: str, msgs: list[dict[str, Any]]) -> None:
    """DeleteMessageBatch of received messages (up to 10)."""
    client.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
    )


def raw_receive_delete_rate(client: Any, url: str, n: int, *, batch_delete: bool) -> float:
    """Messages per second received (10 per call) and deleted, in a batch or one by one."""
    got = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        msgs = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if batch_delete and msgs:
            delete_batch(client, url, msgs)
        else:
            for m in msgs:
                client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        got += len(msgs)
    return got / (time.perf_counter() - t0)
