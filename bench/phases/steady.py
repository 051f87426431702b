"""`steady`: jobs submitted and processed at once, counted in a fixed window (not a burn-down).

Two producer processes (bench/producer.py) keep a backlog: whenever fewer than `backlog` jobs
are queued they insert 100 rows into PostgreSQL and send their ids with SendMessageBatch
(straight to the servers, like a fast API would), while the workers run.
Throughput is the number of jobs that finished inside the window divided by its length; the
latency is created -> finished of those jobs.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from harness import Bench, last_json_line
from measure import CpuTrace, log
from stack import BENCH_DIR, Proc

CHUNK = 100
PRODUCERS = 2  # processes: one harness thread could not keep 4 workers busy


def run(bench: Bench) -> dict[str, Any]:
    """Each (processes x concurrency) of the plan, at steady state."""
    plan = bench.plan
    return {
        "mode": f"steady state: {PRODUCERS} producer processes keep <= backlog jobs queued "
        f"(chunks of {CHUNK}: "
        f"INSERT + SendMessageBatch) while the workers run; warm-up {plan.steady_warmup:g} s "
        f"after the first job finished, then {plan.steady_seconds:g} s counted; "
        "done = status 'succeeded' with finished_at inside the window",
        "runs": [steady_one(bench, w, c) for w, c in plan.e2e_configs],
    }


def backlog_for(workers: int, concurrency: int) -> int:
    """Enough queued jobs that no worker slot waits for the producer, few enough to be shallow."""
    return max(500, 3 * workers * concurrency)


def start_producer(bench: Bench, queue: tuple[str, str], backlog: int, k: int) -> Proc:
    """bench/producer.py on the servers themselves (not through a latency proxy)."""
    argv = [sys.executable, str(BENCH_DIR / "producer.py"), bench.servers.database_url]
    argv += [bench.servers.sqs_endpoint, queue[0], str(backlog), str(CHUNK)]
    return bench.stack.spawn(f"producer{k}", "loadgen", argv, env=bench.client_env(), capture=True)


def stop_producer(bench: Bench, proc: Proc) -> int:
    """SIGTERM a producer; how many jobs it produced."""
    bench.stack.stop(proc, grace=10)
    assert proc.popen.stdout is not None
    out = proc.popen.stdout.read()
    return int(last_json_line(out)["produced"]) if out.strip() else 0


def steady_one(bench: Bench, workers: int, concurrency: int) -> dict[str, Any]:
    """One steady-state run: producer and workers together, then a counted window."""
    plan = bench.plan
    queue = bench.new_queue(f"steady-w{workers}c{concurrency}")
    bench.reset_jobs()
    backlog = backlog_for(workers, concurrency)
    bench.quiet()
    producers = [start_producer(bench, queue, backlog, k) for k in range(PRODUCERS)]
    procs = bench.start_workers(queue, workers, concurrency)
    trace = CpuTrace([p.pid for p in procs])
    try:
        bench.wait_succeeded(1, 60, procs=procs + producers)
        time.sleep(plan.steady_warmup)
        t0 = time.time()
        time.sleep(plan.steady_seconds)
        t1 = time.time()
    finally:
        trace.stop()
        for p in procs:
            bench.stack.stop(p)
        produced = sum(stop_producer(bench, p) for p in producers)
    window = window_stats(bench, t0, t1)
    cpu = trace.between(t0, t1)
    run = {
        "workers": workers,
        "concurrency": concurrency,
        "backlog": backlog,
        "produced": produced,
        **window,
        "worker_cpu_ms_per_job": 1000 * cpu["cpu_seconds"] / max(1, window["jobs"]),
        "machine_busy_percent": cpu["machine_busy_percent"],
        "other_processes_cpu_percent": bench.others(t0),
    }
    log(
        f"jobq steady {workers} worker(s) x {concurrency}: {run['jobs_per_s']:,.0f} jobs/s "
        f"({run['jobs']} in {run['window_s']:.0f} s; created->done p50 "
        f"{run['created_to_done_p50_ms']:.0f} ms p99 {run['created_to_done_p99_ms']:.0f} ms; "
        f"machine {run['machine_busy_percent']:.0f}% busy)"
    )
    return run


def window_stats(bench: Bench, t0: float, t1: float) -> dict[str, Any]:
    """Jobs finished in [t0, t1): their count, rate and created -> finished percentiles."""
    with bench.cursor() as cur:
        cur.execute(
            """SELECT count(*),
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - created_at),
                      percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - created_at),
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - started_at)
               FROM jobs
               WHERE status = 'succeeded'
                 AND finished_at >= to_timestamp(%s) AND finished_at < to_timestamp(%s)""",
            (t0, t1),
        )
        n, p50, p99, claim_to_write = cur.fetchone()
    return {
        "jobs": n,
        "window_s": t1 - t0,
        "jobs_per_s": n / (t1 - t0),
        "created_to_done_p50_ms": p50.total_seconds() * 1000 if p50 else 0.0,
        "created_to_done_p99_ms": p99.total_seconds() * 1000 if p99 else 0.0,
        # Claim -> the completer's write: the handler, the batch fill and the completer's queue.
        "started_to_finished_p50_ms": claim_to_write.total_seconds() * 1000
        if claim_to_write
        else None,
    }
