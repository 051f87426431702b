"""`ingest`: POST /jobs closed-loop at several client counts, POST /jobs/batch, N API processes."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from harness import Bench, last_json_line
from measure import MB, CpuWindow, log

# The extra ingest level runs `jobq api --workers N` with one process per core (GIL-bound).
API_PROCESSES_ROW = max(2, os.cpu_count() or 2)
PROCESSES_CLIENTS = 32


def run(bench: Bench) -> dict[str, Any]:
    """Every level on one API process, the batch endpoint, then one level on N processes."""
    queue = bench.new_queue("ingest")
    bench.reset_jobs()
    api, url = bench.start_api(queue)
    levels: list[dict[str, Any]] = []
    try:
        # Warm the process (imports, pool) before the first measured level.
        bench.loadgen(url, "loadgen-warm", "--concurrency", "4", "--requests", "200")
        for c in bench.plan.ingest_levels:
            bench.quiet()
            t_start = time.time()
            r = measured_level(bench, url, f"loadgen-c{c}", c, api.pid)
            r["other_processes_cpu_percent"] = bench.others(t_start)
            levels.append(r)
            log(
                f"POST /jobs x{c:>3}: {r['req_per_s']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f}  API CPU "
                f"{r['api_cpu_percent']:.0f}% ({r['api_cpu_ms_per_request'] or 0:.1f} ms/req), "
                f"loadgen {r['loadgen_cpu_percent']:.0f}%, "
                f"machine {r['machine_busy_percent']:.0f}%"
                f"  statuses {r['statuses']}"
            )
        batch: dict[str, Any] = {"skipped": "not behind a latency profile"}
        if bench.plan.network == "loopback":
            batch = batch_level(bench, url)
        unpublished = bench.unpublished()
        if unpublished:
            batch["publish_backlog"] = publish_drain(bench, unpublished)
    finally:
        bench.stack.stop(api)
    for lvl in levels:
        lvl["api_processes"] = 1
    if bench.plan.network == "loopback":
        levels.append(processes_level(bench, queue, API_PROCESSES_ROW, PROCESSES_CLIENTS))
    return {
        "levels": levels,
        "batch": batch,
        "unpublished_at_end": unpublished,
        "api_peak_rss_mb": api.peak_rss / MB,
    }


def processes_level(
    bench: Bench, queue: tuple[str, str], processes: int, clients: int
) -> dict[str, Any]:
    """One more level, with the API as `jobq api --workers N` (one process per core)."""
    api, url = bench.start_api(queue, name=f"api-x{processes}", JOBQ_API_WORKERS=str(processes))
    try:
        warm = ["--concurrency", "8", "--requests", "400"]
        bench.loadgen(url, f"loadgen-warm-x{processes}", *warm)
        bench.quiet()
        t_start = time.time()
        r = measured_level(bench, url, f"loadgen-c{clients}-x{processes}", clients, api.pid)
        r["other_processes_cpu_percent"] = bench.others(t_start)
    finally:
        bench.stack.stop(api)
    r["api_processes"] = processes
    log(
        f"POST /jobs x{clients} with {processes} API processes: {r['req_per_s']:7.0f} req/s  "
        f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f}  API CPU "
        f"{r['api_cpu_percent']:.0f}%, machine {r['machine_busy_percent']:.0f}%"
    )
    return r


def publish_drain(bench: Bench, backlog: int, limit: float = 60.0) -> dict[str, Any]:
    """After a burst: how fast the API's publisher (and dispatcher) empty the backlog."""
    t0 = time.monotonic()
    left = backlog
    while left and time.monotonic() - t0 < limit:
        time.sleep(0.5)
        left = bench.unpublished()
    elapsed = time.monotonic() - t0
    r = {
        "unpublished_after_burst": backlog,
        "left_after_s": left,
        "seconds": elapsed,
        "published_per_s": (backlog - left) / elapsed if elapsed else 0.0,
    }
    log(
        f"publish backlog after the batch burst: {backlog} jobs; "
        f"{r['published_per_s']:,.0f} published/s afterwards "
        f"({left} left after {elapsed:.0f} s)"
    )
    return r


def measured_level(bench: Bench, url: str, name: str, clients: int, pid: int) -> dict[str, Any]:
    """A timed load level, with the API's CPU measured inside the counted window."""
    warmup, duration = bench.plan.ingest_warmup, bench.plan.ingest_seconds
    argv = bench.loadgen_argv(
        url, "--concurrency", str(clients), "--duration", str(duration), "--warmup", str(warmup)
    )
    proc = bench.stack.spawn(name, "loadgen", argv, env=bench.client_env(), capture=True)
    try:
        time.sleep(warmup + 0.5)  # interpreter start-up + warm-up
        window = CpuWindow([pid])
        time.sleep(max(0.5, duration - 1.0))
        cpu = window.stop()
        out, _ = proc.popen.communicate(timeout=duration + warmup + 60)
    finally:
        bench.stack.stop(proc, grace=2)
    if proc.popen.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.popen.returncode}")
    r = last_json_line(out)
    r["api_cpu_percent"] = cpu["process_cpu_percent"]
    r["machine_busy_percent"] = cpu["machine_busy_percent"]
    r["api_cpu_ms_per_request"] = (
        10 * cpu["process_cpu_percent"] / r["req_per_s"] if r["req_per_s"] else None
    )
    return r


def batch_shape(bench: Bench, url: str) -> tuple[str | None, dict[str, Any]]:
    """Which body POST /jobs/batch takes ("object" or "list"), or None and why it is skipped."""
    probe_body = {"jobs": [{"task": "echo", "payload": {}}]}
    try:
        with httpx.Client(base_url=url, headers=bench.auth_headers, timeout=10) as client:
            resp = client.post("/jobs/batch", json=probe_body)
            shape = "object"
            if resp.status_code == 422:
                resp = client.post("/jobs/batch", json=probe_body["jobs"])
                shape = "list"
    except httpx.HTTPError as exc:
        return None, {"skipped": f"probe failed: {exc}"}
    if resp.status_code in (404, 405):
        log("POST /jobs/batch: not in this version of the API (skipped)")
        return None, {"skipped": f"POST /jobs/batch answered {resp.status_code}"}
    if resp.status_code >= 300:
        return None, {"skipped": f"POST /jobs/batch answered {resp.status_code}: {resp.text[:200]}"}
    return shape, {}


def batch_level(bench: Bench, url: str) -> dict[str, Any]:
    """POST /jobs/batch (100 jobs, 8 clients), if this version of the API has it."""
    shape, skipped = batch_shape(bench, url)
    if shape is None:
        return skipped
    r = bench.loadgen(
        url,
        "loadgen-batch",
        *("--concurrency", "8", "--batch", "100", "--batch-shape", shape),
        *("--duration", str(bench.plan.ingest_seconds), "--warmup", str(bench.plan.ingest_warmup)),
    )
    log(f"POST /jobs/batch (100 jobs) x8: {r['jobs_per_s']:,.0f} jobs/s  p99 {r['p99_ms']:.1f} ms")
    return r
