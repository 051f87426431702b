"""`celery`: the same no-op jobs on Celery 5 (bench/celery_peer.py) on the same servers."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import UTC
from typing import Any

import psycopg2
from harness import Bench, log_tail
from measure import MB, CpuTrace, log
from stack import BENCH_DIR


def run(bench: Bench) -> dict[str, Any]:
    """Each (pool, concurrency) of the plan drains N published tasks."""
    import celery
    import kombu

    runs = [run_one(bench, pool, concurrency) for pool, concurrency in bench.plan.celery_configs]
    return {
        "version": f"celery {celery.__version__}, kombu {kombu.__version__}",
        "setup": "SQS broker (kombu, predefined_queues, wait_time_seconds=1), "
        "result_backend db+postgresql (SQLAlchemy), defaults otherwise",
        "runs": runs,
    }


def peer_env(bench: Bench, queue_url: str) -> dict[str, str]:
    """The environment celery_peer.py reads (queue, SQS endpoint, result backend)."""
    db = bench.endpoints.database_url
    return dict(
        os.environ,
        BENCH_CELERY_QUEUE=queue_url.rsplit("/", 1)[-1],
        BENCH_CELERY_QUEUE_URL=queue_url,
        BENCH_SQS_ENDPOINT=bench.endpoints.sqs_endpoint,
        BENCH_CELERY_DB_URL="db+" + db.replace("postgresql://", "postgresql+psycopg2://", 1),
        PYTHONPATH=str(BENCH_DIR),
    )


def worker_argv(queue_name: str, pool: str, concurrency: int) -> list[str]:
    """`celery worker` with Celery's defaults, minus the chatter a benchmark does not need."""
    return [
        *(sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "-Q", queue_name),
        *("-P", pool, "-c", str(concurrency), "--loglevel", "WARNING"),
        *("--without-heartbeat", "--without-gossip", "--without-mingle"),
    ]


def run_one(bench: Bench, pool: str, concurrency: int) -> dict[str, Any]:
    """Publish N tasks, then time one Celery worker draining them (result rows in PostgreSQL)."""
    n = bench.plan.celery_jobs or bench.plan.e2e_jobs
    label = f"{pool}{concurrency}"
    url, _ = bench.new_queue(f"celery-{label}", redrive=False)
    env = peer_env(bench, url)
    with bench.cursor() as cur, contextlib.suppress(psycopg2.errors.UndefinedTable):
        cur.execute("TRUNCATE celery_taskmeta")
    pub = enqueue(bench, n, env, label)
    argv = worker_argv(env["BENCH_CELERY_QUEUE"], pool, concurrency)
    bench.quiet()
    t_start = time.time()
    t0 = time.monotonic()
    proc = bench.stack.spawn(
        f"celery-{label}", "celery", argv, env=env, cwd=BENCH_DIR, include_children=True
    )
    trace = CpuTrace([proc.pid], children=True)
    try:
        t_done = bench.wait_succeeded(
            n, max(180, n / 10), table="celery_taskmeta", where="status = 'SUCCESS'", procs=[proc]
        )
    finally:
        trace.stop()
        bench.stack.stop(proc, grace=15)
    with bench.cursor() as cur:
        cur.execute(
            "SELECT count(*), min(date_done), max(date_done) FROM celery_taskmeta "
            "WHERE status = 'SUCCESS'"
        )
        done, first, last = cur.fetchone()
    span = (last - first).total_seconds()
    # date_done is naive UTC
    cpu = trace.between(first.replace(tzinfo=UTC).timestamp(), last.replace(tzinfo=UTC).timestamp())
    run = {
        "pool": pool,
        "concurrency": concurrency,
        "jobs": n,
        "succeeded": done,
        "enqueue_per_s": pub["per_s"],
        "wall_s": t_done - t0,
        "span_s": span,
        "jobs_per_s": (done - 1) / span if span > 0 else 0.0,
        "peak_rss_mb_incl_pool": proc.peak_rss / MB,
        "cpu_ms_per_job": 1000 * cpu["cpu_seconds"] / max(1, done - 1),
        "machine_busy_percent": cpu["machine_busy_percent"],
        "other_processes_cpu_percent": bench.others(t_start),
    }
    log(
        f"Celery {pool} -c {concurrency}: {run['jobs_per_s']:,.0f} jobs/s "
        f"(span {span:.1f} s, "
        f"wall {run['wall_s']:.1f} s; publish {pub['per_s']:,.0f}/s; RSS incl. pool "
        f"{run['peak_rss_mb_incl_pool']:.0f} MB)"
    )
    return run


def enqueue(bench: Bench, n: int, env: dict[str, str], label: str) -> dict[str, Any]:
    """Publish n Celery tasks from a few processes at once (kombu sends one per call)."""
    k = bench.plan.celery_enqueue_procs
    shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
    t0 = time.perf_counter()
    procs = [
        bench.stack.spawn(
            f"celery-enqueue-{label}-{i}",
            "loadgen",
            [sys.executable, str(BENCH_DIR / "celery_peer.py"), "enqueue", str(share)],
            env=env,
            cwd=BENCH_DIR,
            capture=True,
        )
        for i, share in enumerate(shares)
    ]
    try:
        for p in procs:
            p.popen.communicate(timeout=600)
            if p.popen.returncode != 0:
                raise RuntimeError(f"{p.name} exited {p.popen.returncode}: {log_tail(p)}")
    finally:
        for p in procs:
            bench.stack.stop(p, grace=2)
    elapsed = time.perf_counter() - t0
    return {"published": n, "seconds": elapsed, "per_s": n / elapsed}
