"""The steady-state phase's producer, as its own process (its CPU is not the harness's GIL).

Keeps at most BACKLOG jobs queued: while fewer are, insert CHUNK echo rows into PostgreSQL and
send their ids with SendMessageBatch (straight to the servers, like a fast API), until SIGTERM.
Prints {"produced": N} when it stops.

    python bench/producer.py DATABASE_URL SQS_ENDPOINT QUEUE_URL BACKLOG [CHUNK]
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import psycopg2.extras


def produce(db: str, endpoint: str, queue_url: str, backlog: int, chunk: int) -> int:
    """Top the queue up to `backlog` until SIGTERM; how many jobs were produced."""
    from app.config import Settings
    from app.sqs.queue import Outgoing, SqsQueue, make_sqs_client

    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    sqs = SqsQueue(make_sqs_client(Settings(sqs_endpoint_url=endpoint)), queue_url)
    conn = psycopg2.connect(db)
    conn.autocommit = True
    cur = conn.cursor()
    produced = 0
    with ThreadPoolExecutor(4) as pool:
        while not stopping[0]:
            cur.execute("SELECT count(*) FROM jobs WHERE status = 'queued'")
            if cur.fetchone()[0] >= backlog:
                time.sleep(0.01)
                continue
            ids = [uuid.uuid4() for _ in range(chunk)]
            rows: list[Any] = [(str(i), "echo", "queued", "{}", 3, i.hex) for i in ids]
            psycopg2.extras.execute_values(
                cur,
                """INSERT INTO jobs
                     (id, task, status, payload, max_attempts, trace_id, published_at)
                   VALUES %s""",
                rows,
                template="(%s, %s, %s, %s::jsonb, %s, %s, now())",
            )
            items = [Outgoing(i, i.hex) for i in ids]
            parts = [items[k : k + 10] for k in range(0, chunk, 10)]
            produced += sum(len(ok) for ok in pool.map(sqs.send_batch, parts))
    conn.close()
    return produced


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (4, 5):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    chunk = int(args[4]) if len(args) == 5 else 100
    print(json.dumps({"produced": produce(args[0], args[1], args[2], int(args[3]), chunk)}))
