"""`e2e` (workers drain preloaded jobs) and `pipeline` (the same jobs through the API)."""

from __future__ import annotations

import time
from typing import Any

from harness import Bench
from measure import MB, CpuTrace, log


def drain(bench: Bench) -> dict[str, Any]:
    """N preloaded echo jobs drained by each (processes x concurrency) of the plan."""
    runs = [drain_one(bench, w, c) for w, c in bench.plan.e2e_configs]
    return {
        "mode": "preloaded: rows inserted into PostgreSQL and ids sent "
        "with SendMessageBatch before the workers start",
        "runs": runs,
    }


def drain_one(bench: Bench, workers: int, concurrency: int) -> dict[str, Any]:
    """One drain: preload, start the workers, wait until every job succeeded."""
    n = bench.plan.e2e_jobs
    queue = bench.new_queue(f"e2e-w{workers}c{concurrency}")
    bench.reset_jobs()
    preload = bench.preload_jobs(queue, n)
    bench.quiet()
    t_start = time.time()
    t0 = time.monotonic()
    procs = bench.start_workers(queue, workers, concurrency)
    trace = CpuTrace([p.pid for p in procs])
    try:
        t_done = bench.wait_succeeded(n, max(120, n / 20), procs=procs)
    finally:
        trace.stop()
        for p in procs:
            bench.stack.stop(p)
    stats = jobq_span(bench)
    cpu = trace.between(stats.pop("first_done_ts"), stats.pop("last_done_ts"))
    run = {
        "workers": workers,
        "concurrency": concurrency,
        "jobs": n,
        "preload_s": preload,
        "wall_s": t_done - t0,
        **stats,
        "worker_peak_rss_mb": max(p.peak_rss for p in procs) / MB,
        "worker_cpu_ms_per_job": 1000 * cpu["cpu_seconds"] / max(1, n - 1),
        "machine_busy_percent": cpu["machine_busy_percent"],
        "other_processes_cpu_percent": bench.others(t_start),
    }
    log(
        f"jobq drain {workers} worker(s) x {concurrency}: {run['jobs_per_s']:,.0f} jobs/s "
        f"(span {run['span_s']:.1f} s, wall incl. start-up {run['wall_s']:.1f} s, "
        f"RSS {run['worker_peak_rss_mb']:.0f} MB, worker CPU "
        f"{run['worker_cpu_ms_per_job']:.1f} ms/job, machine "
        f"{run['machine_busy_percent']:.0f}% busy)"
    )
    return run


def jobq_span(bench: Bench) -> dict[str, Any]:
    """Throughput and spans of the succeeded jobs, from their timestamps in PostgreSQL."""
    with bench.cursor() as cur:
        cur.execute(
            """SELECT count(*), min(started_at), min(finished_at), max(finished_at),
                      min(created_at), sum(CASE WHEN attempts > 1 THEN 1 ELSE 0 END)
               FROM jobs WHERE status = 'succeeded'"""
        )
        n, first_start, first_done, last_done, first_created, retried = cur.fetchone()
        cur.execute("SELECT count(*) FROM job_attempts WHERE outcome <> 'succeeded'")
        bad_attempts = cur.fetchone()[0]
        # Claim -> completer's write: the handler, the batch fill and the completer's queue.
        cur.execute(
            """SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                        (ORDER BY extract(epoch FROM finished_at - started_at) * 1000)
               FROM jobs WHERE status = 'succeeded'"""
        )
        claim_to_write = cur.fetchone()[0] or [None, None]
    done_span = (last_done - first_done).total_seconds()
    return {
        "succeeded": n,
        "span_s": done_span,
        "jobs_per_s": (n - 1) / done_span if done_span > 0 else 0.0,
        "start_to_done_s": (last_done - first_start).total_seconds(),
        "created_to_done_s": (last_done - first_created).total_seconds(),
        "jobs_retried": retried,
        "non_success_attempts": bad_attempts,
        "started_to_finished_p50_ms": claim_to_write[0],
        "started_to_finished_p99_ms": claim_to_write[1],
        "first_done_ts": first_done.timestamp(),
        "last_done_ts": last_done.timestamp(),
    }


def pipeline(bench: Bench) -> dict[str, Any]:
    """Jobs submitted through the API (32 clients) while workers run them: created -> done."""
    n = max(100, bench.plan.e2e_jobs // 2)  # bounded by the API's ingest rate: keep it short
    workers, concurrency = bench.plan.pipeline_config
    queue = bench.new_queue("pipeline")
    bench.reset_jobs()
    api, url = bench.start_api(queue, name="api-pipeline")
    procs = bench.start_workers(queue, workers, concurrency)
    try:
        time.sleep(2.0)  # workers up and polling
        gen = bench.loadgen(url, "loadgen-pipeline", "--concurrency", "32", "--requests", str(n))
        bench.wait_succeeded(n, max(120, n / 20), procs=procs)
    finally:
        for p in procs:
            bench.stack.stop(p)
        bench.stack.stop(api)
    stats = jobq_span(bench)
    stats.pop("first_done_ts")
    stats.pop("last_done_ts")
    created_to_done = stats["created_to_done_s"]
    r = {
        "workers": workers,
        "concurrency": concurrency,
        "clients": 32,
        "jobs": n,
        "submit_req_per_s": gen["req_per_s"],
        "submit_p99_ms": gen["p99_ms"],
        "jobs_per_s": n / created_to_done if created_to_done > 0 else 0.0,
        **{k: v for k, v in stats.items() if k != "jobs_per_s"},
        "api_peak_rss_mb": api.peak_rss / MB,
        "worker_peak_rss_mb": max(p.peak_rss for p in procs) / MB,
    }
    log(
        f"jobq via API (32 clients) + {workers} worker(s) x {concurrency}: "
        f"{r['jobs_per_s']:,.0f} "
        f"jobs/s first created -> last done ({r['created_to_done_s']:.1f} s); submit "
        f"{r['submit_req_per_s']:,.0f} req/s"
    )
    return r
