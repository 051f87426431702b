"""`latency`: enqueue -> start of single jobs, submitted one at a time to an idle worker."""

from __future__ import annotations

import time
from typing import Any

import httpx
from harness import Bench
from measure import log, pct


def run(bench: Bench) -> dict[str, Any]:
    """API + 1 worker in the production long poll; `started_at - created_at` percentiles."""
    plan = bench.plan
    queue = bench.new_queue("latency")
    bench.reset_jobs()
    api, url = bench.start_api(queue, name="api-latency")
    # The production long poll (20 s): an idle worker sits in ReceiveMessage.
    workers = bench.start_workers(queue, 1, 8, wait=20)
    post_ms: list[float] = []
    try:
        time.sleep(3.0)  # let the worker start and enter its long poll
        with httpx.Client(base_url=url, headers=bench.auth_headers, timeout=10) as client:
            for _ in range(plan.latency_jobs):
                t0 = time.perf_counter()
                client.post("/jobs", json={"task": "echo", "payload": {}}).raise_for_status()
                post_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(plan.latency_pause)
        bench.wait_succeeded(plan.latency_jobs, 60, procs=workers)
        with bench.cursor() as cur:
            cur.execute(
                """SELECT extract(epoch FROM started_at - created_at) * 1000,
                          extract(epoch FROM finished_at - created_at) * 1000
                   FROM jobs WHERE status = 'succeeded'"""
            )
            rows = cur.fetchall()
    finally:
        for w in workers:
            bench.stack.stop(w, grace=3)
        bench.stack.stop(api)
    start = [float(r[0]) for r in rows]
    done = [float(r[1]) for r in rows]
    r = {
        "jobs": len(rows),
        "pause_s": plan.latency_pause,
        "worker": "1 process, concurrency 8, JOBQ_SQS_WAIT_SECONDS=20",
        "enqueue_to_start_p50_ms": pct(start, 50),
        "enqueue_to_start_p99_ms": pct(start, 99),
        "enqueue_to_done_p50_ms": pct(done, 50),
        "enqueue_to_done_p99_ms": pct(done, 99),
        "post_p50_ms": pct(post_ms, 50),
        "post_p99_ms": pct(post_ms, 99),
    }
    log(
        f"enqueue->start p50 {r['enqueue_to_start_p50_ms']:.1f} ms p99 "
        f"{r['enqueue_to_start_p99_ms']:.1f} ms; "
        f"->done p50 {r['enqueue_to_done_p50_ms']:.1f} ms"
    )
    return r
