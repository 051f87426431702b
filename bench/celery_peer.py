"""The peer: the same no-op workload on Celery 5 with its SQS broker and a PostgreSQL backend.

This is the stack a user would otherwise pick: kombu's SQS transport (with `predefined_queues`
naming a queue on the same SQS server jobq uses) and the SQLAlchemy result backend
(`db+postgresql://...`) on the same PostgreSQL. Celery's defaults are kept (prefork pool,
prefetch multiplier 4, early ack); only polling is shortened to match jobq's 1 s long poll.

Configured by environment (set by run.py):
  BENCH_CELERY_QUEUE_URL, BENCH_CELERY_QUEUE (name), BENCH_SQS_ENDPOINT, BENCH_CELERY_DB_URL

    python bench/celery_peer.py enqueue N          # publish N tasks, print JSON with the rate
    celery -A celery_peer worker -Q NAME -c 4      # (cwd bench/) the worker run.py starts
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from celery import Celery

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")
QUEUE_URL = os.environ.get("BENCH_CELERY_QUEUE_URL", "")
ENDPOINT = urlparse(os.environ.get("BENCH_SQS_ENDPOINT", "http://127.0.0.1:4566"))
ACCESS_KEY = os.environ.get("AWS_ACCESS_KEY_ID", "test")
SECRET_KEY = os.environ.get("AWS_SECRET_ACCESS_KEY", "test")

app = Celery("celery_peer")
app.conf.update(
    broker_url=f"sqs://{ENDPOINT.hostname}:{ENDPOINT.port or 443}",
    broker_transport_options={
        "region": os.environ.get("AWS_REGION", "us-east-1"),
        "is_secure": ENDPOINT.scheme == "https",
        "predefined_queues": {
            QUEUE: {"url": QUEUE_URL, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}
        },
        "wait_time_seconds": 1,  # like JOBQ_SQS_WAIT_SECONDS=1 in the jobq runs
        "polling_interval": 0,
        "visibility_timeout": 30,
    },
    result_backend=os.environ.get("BENCH_CELERY_DB_URL", ""),
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_send_task_events=False,
)


@app.task(name="bench.echo")
def echo(payload: dict) -> dict:
    """The no-op job: return the payload (what jobq's `echo` does)."""
    return payload


def enqueue(n: int, threads: int = 4) -> dict:
    """Publish n tasks (threads share the work: kombu sends one SendMessage per task)."""
    start = time.perf_counter()

    def publish(count: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                echo.apply_async(({},), producer=producer, ignore_result=False)

    shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, shares))
    elapsed = time.perf_counter() - start
    return {"published": n, "seconds": elapsed, "per_s": n / elapsed}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "enqueue":
        print(json.dumps(enqueue(int(sys.argv[2]))))
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
