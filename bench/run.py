"""jobq benchmark: limits, API ingest, end-to-end, enqueue->start latency, Celery peer, RSS.

One run on one machine: an embedded PostgreSQL (pgserver) and fauxqs (unless SQS_ENDPOINT_URL
is set) are started here, measured raw, then jobq and Celery run on them. Prints a table and
writes bench/results/latest.json and bench/results/latest.png.

    .venv/bin/python bench/run.py            # full run, ~7 minutes (+1.5 with --profile)
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 minutes
    .venv/bin/python bench/run.py --profile  # also count round trips and py-spy the hot paths
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg2  # noqa: E402
import psycopg2.extras  # noqa: E402
from report import plot, render_table, summarize  # noqa: E402
from stack import BENCH_DIR, REPO_DIR, Proc, Stack, free_port, jobq_command, wait_http  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
MB = 1024 * 1024
# The extra ingest level runs `jobq api --workers N` with one process per core (GIL-bound).
API_PROCESSES_ROW = max(2, os.cpu_count() or 2)


# -- configuration -------------------------------------------------------------------------


@dataclass
class Plan:
    """How much of everything one run does (default vs --quick)."""

    quick: bool
    limit_seconds: float
    sqs_limit_messages: int
    ingest_levels: tuple[int, ...]
    ingest_seconds: float
    ingest_warmup: float
    e2e_jobs: int
    e2e_configs: tuple[tuple[int, int], ...]  # (worker processes, concurrency each)
    pipeline_config: tuple[int, int]
    latency_jobs: int
    latency_pause: float
    celery_configs: tuple[tuple[str, int], ...]  # (pool, concurrency)
    celery_enqueue_procs: int = 2

    @classmethod
    def make(cls, quick: bool, jobs: int | None) -> Plan:
        if quick:
            return cls(
                quick=True,
                limit_seconds=2.0,
                sqs_limit_messages=2000,
                ingest_levels=(1, 8, 32, 128),
                ingest_seconds=3.0,
                ingest_warmup=1.0,
                e2e_jobs=jobs or 500,
                e2e_configs=((1, 8), (2, 32)),
                pipeline_config=(2, 32),
                latency_jobs=20,
                latency_pause=0.1,
                celery_configs=(("prefork", 4),),
            )
        return cls(
            quick=False,
            limit_seconds=5.0,
            sqs_limit_messages=5000,
            ingest_levels=(1, 8, 32, 128),
            ingest_seconds=10.0,
            ingest_warmup=2.0,
            e2e_jobs=jobs or 5000,
            e2e_configs=((1, 8), (1, 32), (2, 32), (4, 32)),
            pipeline_config=(2, 32),
            latency_jobs=100,
            latency_pause=0.1,
            # prefork with -c = CPU count is Celery's default; 4 matches jobq's 4 processes.
            celery_configs=(("prefork", 2), ("prefork", 4)),
        )


# -- small helpers -------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return 0.0
    ordered = sorted(values)
    import math

    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


@contextlib.contextmanager
def pg(url: str) -> Iterator[Any]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        yield conn.cursor()
    finally:
        conn.close()


def scalar(url: str, sql: str, params: Any = None) -> Any:
    with pg(url) as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None


class CpuTrace:
    """Samples the CPU time of some processes (and their children) and of the machine every
    0.1 s, so the CPU spent between two instants (e.g. first and last job done) can be read."""

    def __init__(self, pids: list[int], children: bool = False) -> None:
        self.procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                self.procs.append(psutil.Process(pid))
        self.children = children
        self.samples: list[tuple[float, float, float, float]] = []  # wall, proc cpu, busy, total
        self._stop = threading.Event()
        self._cpu_seen: dict[int, float] = {}
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="cpu-trace", daemon=True)
        self._thread.start()

    def _proc_cpu(self) -> float:
        for p in self.procs:
            members = [p]
            if self.children:
                with contextlib.suppress(psutil.Error):
                    members += p.children(recursive=True)
            for m in members:
                with contextlib.suppress(psutil.Error):
                    t = m.cpu_times()
                    self._cpu_seen[m.pid] = t.user + t.system  # keeps the last value of the dead
        return sum(self._cpu_seen.values())

    def _sample(self) -> None:
        m = psutil.cpu_times()
        idle = m.idle + getattr(m, "iowait", 0)
        total = sum(m)
        self.samples.append((time.time(), self._proc_cpu(), total - idle, total))

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds of the processes, and machine busy %, between wall-clock t0 and t1."""
        if not self.samples or t1 <= t0:
            return {"cpu_seconds": 0.0, "machine_busy_percent": 0.0}
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        total = b[3] - a[3]
        return {
            "cpu_seconds": b[1] - a[1],
            "process_cpu_percent": 100 * (b[1] - a[1]) / max(1e-9, b[0] - a[0]),
            "machine_busy_percent": 100 * (b[2] - a[2]) / total if total > 0 else 0.0,
        }


class CpuWindow:
    """CPU used by some processes, and how busy the whole machine was, between start and stop."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                # With `jobq api --workers N` the serving processes are the supervisor's children.
                self.procs += [proc, *proc.children(recursive=True)]
        self.c0 = [self._cpu(p) for p in self.procs]
        self.m0 = psutil.cpu_times()
        self.t0 = time.monotonic()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def stop(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        used = sum(max(0.0, self._cpu(p) - c) for p, c in zip(self.procs, self.c0, strict=True))
        m1 = psutil.cpu_times()
        total = sum(m1) - sum(self.m0)
        idle = (m1.idle + getattr(m1, "iowait", 0)) - (self.m0.idle + getattr(self.m0, "iowait", 0))
        return {
            "cpu_seconds": used,
            "process_cpu_percent": 100 * used / wall,
            "machine_busy_percent": 100 * (1 - idle / total) if total > 0 else 0.0,
        }


def machine_busy(seconds: float) -> float:
    """Percent of all CPUs busy over the next `seconds`."""
    a = psutil.cpu_times()
    time.sleep(seconds)
    b = psutil.cpu_times()
    total = sum(b) - sum(a)
    idle = (b.idle + getattr(b, "iowait", 0)) - (a.idle + getattr(a, "iowait", 0))
    return 100 * (1 - idle / total) if total > 0 else 0.0


def wait_until_idle(max_wait: float, threshold: float = 20.0) -> float:
    """Wait (up to max_wait s) for the machine to be quiet; return the last busy percentage."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy(2.0)
    while busy > threshold and time.monotonic() < deadline:
        log(f"machine {busy:.0f}% busy before the run; waiting for it to quiet down")
        time.sleep(5)
        busy = machine_busy(2.0)
    return busy


def wait_quiet(stack: Stack, max_wait: float, threshold: float = 10.0) -> float | None:
    """Between phases: wait (up to max_wait s) until processes that are not ours use less than
    `threshold`% CPU over 3 s; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        t0 = time.time()
        stack.foreign.sample(stack.workdir)
        time.sleep(3.0)
        stack.foreign.sample(stack.workdir)
        other = stack.foreign.percent_between(t0, time.time())
        if other is None or other < threshold or time.monotonic() > deadline:
            return other
        log(f"other processes use {other:.0f}% CPU; waiting for quiet (--wait-idle)")


def log_tail(proc: Proc, chars: int = 1500) -> str:
    try:
        return proc.log_path.read_text(errors="replace")[-chars:] if proc.log_path else ""
    except OSError:
        return ""


def reset_jobs(url: str) -> None:
    with pg(url) as cur:
        cur.execute("TRUNCATE jobs, job_attempts")


class Bench:
    """One benchmark run: owns the stack and collects results."""

    def __init__(self, plan: Plan, stack: Stack, args: argparse.Namespace) -> None:
        self.plan = plan
        self.stack = stack
        self.args = args
        self.results: dict[str, Any] = {}
        self.db = ""
        self.endpoint = ""
        self.sqs: Any = None
        self.settings: Any = None
        self._queue_seq = 0
        # The API refuses to start without keys (JOBQ_AUTH=required): benchmark it as deployed,
        # with one submit key, but without the per-key submit rate limit (it would cap req/s).
        self.api_key = secrets.token_hex(16)
        self.auth_headers = {"authorization": f"Bearer {self.api_key}"}

    # -- set-up ------------------------------------------------------------------------

    def setup(self) -> None:
        import app
        from app.config import Settings
        from app.migrate import upgrade
        from app.queue import make_sqs_client

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        os.environ.setdefault("AWS_REGION", "us-east-1")
        t0 = time.perf_counter()
        self.db = self.stack.start_postgres()
        log(f"PostgreSQL (pgserver) up in {time.perf_counter() - t0:.1f} s: {self.db}")
        if os.environ.get("SQS_ENDPOINT_URL"):
            self.endpoint = os.environ["SQS_ENDPOINT_URL"]
            sqs_server = f"external ({self.endpoint})"
        else:
            t0 = time.perf_counter()
            self.endpoint = self.stack.start_fauxqs()
            sqs_server = "fauxqs 2.4.1 (Node 22), 127.0.0.1"
            log(f"fauxqs up in {time.perf_counter() - t0:.1f} s: {self.endpoint}")
        upgrade(self.db)
        self.settings = Settings(sqs_endpoint_url=self.endpoint, database_url=self.db)
        self.sqs = make_sqs_client(self.settings)
        with pg(self.db) as cur:
            cur.execute("SELECT version()")
            pg_version = cur.fetchone()[0].split(" on ")[0]
            cur.execute("SHOW fsync")
            fsync = cur.fetchone()[0]
            cur.execute("SHOW synchronous_commit")
            sync_commit = cur.fetchone()[0]
        self.results["environment"] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.plan.quick else "full",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgresql": f"{pg_version} (pgserver, Unix socket, fsync={fsync}, "
            f"synchronous_commit={sync_commit})",
            "sqs_server": sqs_server,
            "git": os.environ.get("BENCH_REVISION") or _git_describe(),
            "jobq_installed_from": str(Path(app.__file__).resolve().parent.parent),
        }

    def new_queue(self, label: str, *, redrive: bool = True) -> tuple[str, str]:
        from app.queue import ensure_queues

        self._queue_seq += 1
        name = f"bench-{self._queue_seq:02d}-{label}"
        if not redrive:
            return self.sqs.create_queue(QueueName=name)["QueueUrl"], ""
        return ensure_queues(self.sqs, name, name + "-dlq", max_receive_count=3)

    def jobq_env(self, queue: tuple[str, str], **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("JOBQ_TASK_MODULES", "HOST"):
            env.pop(var, None)
        env.update(
            DATABASE_URL=self.db,
            SQS_QUEUE_URL=queue[0],
            SQS_DLQ_URL=queue[1],
            SQS_ENDPOINT_URL=self.endpoint,
            JOBQ_LOG_LEVEL="WARNING",
            JOBQ_LOG_FORMAT="json",
            JOBQ_MAX_ATTEMPTS="3",
            JOBQ_API_KEYS=f"bench:submit:{self.api_key}",
            JOBQ_SUBMIT_RATE="0",
        )
        env.update(extra)
        return env

    def start_api(
        self, queue: tuple[str, str], name: str = "api", **extra: str
    ) -> tuple[Proc, str]:
        port = free_port()
        env = self.jobq_env(queue, HOST="127.0.0.1", PORT=str(port), **extra)
        proc = self.stack.spawn(name, "api", jobq_command("api"), env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/readyz", 30, proc.popen)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log_tail(proc)}") from exc
        return proc, url

    def start_workers(
        self, queue: tuple[str, str], count: int, concurrency: int, wait: int = 1, **extra: str
    ) -> list[Proc]:
        procs = []
        for i in range(count):
            env = self.jobq_env(
                queue,
                HOST="127.0.0.1",
                JOBQ_METRICS_PORT=str(free_port()),  # each worker serves /metrics on its own port
                JOBQ_WORKER_CONCURRENCY=str(concurrency),
                JOBQ_SQS_WAIT_SECONDS=str(wait),
                **extra,
            )
            name = f"worker{i + 1}-{self._queue_seq}"
            procs.append(self.stack.spawn(name, "worker", jobq_command("worker"), env=env))
        return procs

    def run_child_json(
        self, name: str, argv: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO_DIR
    ) -> dict[str, Any]:
        proc = self.stack.spawn(name, "loadgen", argv, env=env, cwd=cwd, capture=True)
        try:
            out, _ = proc.popen.communicate(timeout=timeout)
        finally:
            self.stack.stop(proc, grace=2)
        if proc.popen.returncode != 0:
            tail = proc.log_path.read_text()[-2000:] if proc.log_path else ""
            raise RuntimeError(f"{name} exited {proc.popen.returncode}: {tail}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def quiet(self) -> None:
        """With --wait-idle: wait for other processes to calm down before a measurement."""
        if getattr(self.args, "wait_idle", 0):
            wait_quiet(self.stack, self.args.wait_idle)

    def others(self, t0: float) -> float | None:
        """CPU % (of one core) used by processes that are not ours since wall-clock t0."""
        self.stack.foreign.sample(self.stack.workdir)
        return self.stack.foreign.percent_between(t0, time.time())

    def client_env(self) -> dict[str, str]:
        return dict(os.environ, BENCH_API_KEY=self.api_key)

    def loadgen(self, url: str, name: str, *extra: str, timeout: float = 600) -> dict[str, Any]:
        argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url, *extra]
        return self.run_child_json(name, argv, self.client_env(), timeout)

    def wait_succeeded(
        self,
        n: int,
        timeout: float,
        table: str = "jobs",
        where: str = "status = 'succeeded'",
        procs: list[Proc] | None = None,
    ) -> float:
        """Poll the DB (SQL count) until n rows match; return the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        conn = psycopg2.connect(self.db)
        conn.autocommit = True
        try:
            cur = conn.cursor()
            while True:
                with contextlib.suppress(psycopg2.errors.UndefinedTable):
                    cur.execute(f"SELECT count(*) FROM {table} WHERE {where}")
                    if cur.fetchone()[0] >= n:
                        return time.monotonic()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not all {n} jobs finished within {timeout:.0f} s")
                for p in procs or []:
                    if p.popen.poll() is not None:
                        raise RuntimeError(
                            f"{p.name} exited with {p.popen.returncode}: {log_tail(p)}"
                        )
                time.sleep(0.05)
        finally:
            conn.close()

    # -- 1. limits -------------------------------------------------------------------------

    def limits(self) -> None:
        seconds = self.plan.limit_seconds
        reset_jobs(self.db)
        one = raw_insert_rate(self.db, seconds, connections=1)
        log(f"raw INSERT+COMMIT, 1 connection: {one:,.0f}/s")
        eight = raw_insert_rate(self.db, seconds, connections=8)
        log(f"raw INSERT+COMMIT, 8 connections: {eight:,.0f}/s")
        reset_jobs(self.db)
        url = self.new_queue("raw", redrive=False)[0]
        n = self.plan.sqs_limit_messages
        send = raw_send_rate(self.sqs, url, n)
        log(f"raw SendMessageBatch: {send:,.0f} msgs/s")
        recv = raw_receive_delete_rate(self.sqs, url, n, batch_delete=True)
        log(f"raw ReceiveMessage + DeleteMessageBatch: {recv:,.0f} msgs/s")
        raw_send_rate(self.sqs, url, n // 2)
        recv1 = raw_receive_delete_rate(self.sqs, url, n // 2, batch_delete=False)
        log(f"raw ReceiveMessage + DeleteMessage (one per message): {recv1:,.0f} msgs/s")
        self.results["limits"] = {
            "insert_commit_per_s": one,
            "insert_commit_8conn_per_s": eight,
            "sqs_send_batch_msgs_per_s": send,
            "sqs_receive_delete_batch_msgs_per_s": recv,
            "sqs_receive_delete_single_msgs_per_s": recv1,
        }

    # -- 2. API ingest ---------------------------------------------------------------------

    def ingest(self) -> None:
        queue = self.new_queue("ingest")
        reset_jobs(self.db)
        api, url = self.start_api(queue)
        levels: list[dict[str, Any]] = []
        try:
            # Warm the process (imports, pool) before the first measured level.
            self.loadgen(url, "loadgen-warm", "--concurrency", "4", "--requests", "200")
            for c in self.plan.ingest_levels:
                self.quiet()
                t_start = time.time()
                r = self.loadgen_measured(url, f"loadgen-c{c}", c, api.pid)
                r["other_processes_cpu_percent"] = self.others(t_start)
                levels.append(r)
                log(
                    f"POST /jobs x{c:>3}: {r['req_per_s']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                    f"p95 {r['p95_ms']:6.1f}  p99 {r['p99_ms']:6.1f}  API CPU "
                    f"{r['api_cpu_percent']:.0f}% ({r['api_cpu_ms_per_request'] or 0:.1f} ms/req), "
                    f"loadgen {r['loadgen_cpu_percent']:.0f}%, "
                    f"machine {r['machine_busy_percent']:.0f}%"
                    f"  statuses {r['statuses']}"
                )
            batch = self.ingest_batch(url)
            unpublished = scalar(self.db, "SELECT count(*) FROM jobs WHERE published_at IS NULL")
            if unpublished:
                batch["publish_backlog"] = self.publish_drain(unpublished)
        finally:
            self.stack.stop(api)
        for lvl in levels:
            lvl["api_processes"] = 1
        levels.append(self.ingest_processes(queue, API_PROCESSES_ROW, 32))
        self.results["ingest"] = {
            "levels": levels,
            "batch": batch,
            "unpublished_at_end": unpublished,
            "api_peak_rss_mb": api.peak_rss / MB,
        }

    def ingest_processes(
        self, queue: tuple[str, str], processes: int, clients: int
    ) -> dict[str, Any]:
        """One more level, with the API as `jobq api --workers N` (one process per core)."""
        api, url = self.start_api(queue, name=f"api-x{processes}", JOBQ_API_WORKERS=str(processes))
        try:
            warm = ["--concurrency", "8", "--requests", "400"]
            self.loadgen(url, f"loadgen-warm-x{processes}", *warm)
            self.quiet()
            t_start = time.time()
            r = self.loadgen_measured(url, f"loadgen-c{clients}-x{processes}", clients, api.pid)
            r["other_processes_cpu_percent"] = self.others(t_start)
        finally:
            self.stack.stop(api)
        r["api_processes"] = processes
        log(
            f"POST /jobs x{clients} with {processes} API processes: {r['req_per_s']:7.0f} req/s  "
            f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f}  API CPU "
            f"{r['api_cpu_percent']:.0f}%, machine {r['machine_busy_percent']:.0f}%"
        )
        return r

    def publish_drain(self, backlog: int, limit: float = 60.0) -> dict[str, Any]:
        """After a burst: how fast the API's publisher (and dispatcher) empty the backlog."""
        t0 = time.monotonic()
        left = backlog
        while left and time.monotonic() - t0 < limit:
            time.sleep(0.5)
            left = scalar(self.db, "SELECT count(*) FROM jobs WHERE published_at IS NULL")
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

    def loadgen_measured(self, url: str, name: str, clients: int, pid: int) -> dict[str, Any]:
        """A timed load level, with the API's CPU measured inside the counted window."""
        warmup, duration = self.plan.ingest_warmup, self.plan.ingest_seconds
        argv = [
            sys.executable,
            str(BENCH_DIR / "loadgen.py"),
            "--url",
            url,
            "--concurrency",
            str(clients),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ]
        proc = self.stack.spawn(name, "loadgen", argv, env=self.client_env(), capture=True)
        try:
            time.sleep(warmup + 0.5)  # interpreter start-up + warm-up
            window = CpuWindow([pid])
            time.sleep(max(0.5, duration - 1.0))
            cpu = window.stop()
            out, _ = proc.popen.communicate(timeout=duration + warmup + 60)
        finally:
            self.stack.stop(proc, grace=2)
        if proc.popen.returncode != 0:
            raise RuntimeError(f"{name} exited {proc.popen.returncode}")
        r = json.loads(out.decode().strip().splitlines()[-1])
        r["api_cpu_percent"] = cpu["process_cpu_percent"]
        r["machine_busy_percent"] = cpu["machine_busy_percent"]
        r["api_cpu_ms_per_request"] = (
            10 * cpu["process_cpu_percent"] / r["req_per_s"] if r["req_per_s"] else None
        )
        return r

    def ingest_batch(self, url: str) -> dict[str, Any]:
        """POST /jobs/batch, if this version of the API has it."""
        probe_body = {"jobs": [{"task": "echo", "payload": {}}]}
        try:
            resp = httpx.post(
                url + "/jobs/batch", json=probe_body, headers=self.auth_headers, timeout=10
            )
            shape = "object"
            if resp.status_code == 422:
                resp = httpx.post(
                    url + "/jobs/batch",
                    json=probe_body["jobs"],
                    headers=self.auth_headers,
                    timeout=10,
                )
                shape = "list"
        except httpx.HTTPError as exc:
            return {"skipped": f"probe failed: {exc}"}
        if resp.status_code in (404, 405):
            log("POST /jobs/batch: not in this version of the API (skipped)")
            return {"skipped": f"POST /jobs/batch answered {resp.status_code}"}
        if resp.status_code >= 300:
            return {"skipped": f"POST /jobs/batch answered {resp.status_code}: {resp.text[:200]}"}
        r = self.loadgen(
            url,
            "loadgen-batch",
            "--concurrency",
            "8",
            "--batch",
            "100",
            "--batch-shape",
            shape,
            "--duration",
            str(self.plan.ingest_seconds),
            "--warmup",
            str(self.plan.ingest_warmup),
        )
        log(
            f"POST /jobs/batch (100 jobs) x8: {r['jobs_per_s']:,.0f} jobs/s  "
            f"p99 {r['p99_ms']:.1f} ms"
        )
        return r

    # -- 3. enqueue -> start latency -------------------------------------------------------

    def latency(self) -> None:
        queue = self.new_queue("latency")
        reset_jobs(self.db)
        api, url = self.start_api(queue, name="api-latency")
        # The production long poll (20 s): an idle worker sits in ReceiveMessage.
        workers = self.start_workers(queue, 1, 8, wait=20)
        post_ms: list[float] = []
        try:
            time.sleep(3.0)  # let the worker start and enter its long poll
            with httpx.Client(base_url=url, headers=self.auth_headers, timeout=10) as client:
                for _ in range(self.plan.latency_jobs):
                    t0 = time.perf_counter()
                    client.post("/jobs", json={"task": "echo", "payload": {}}).raise_for_status()
                    post_ms.append((time.perf_counter() - t0) * 1000)
                    time.sleep(self.plan.latency_pause)
            self.wait_succeeded(self.plan.latency_jobs, 60, procs=workers)
            with pg(self.db) as cur:
                cur.execute(
                    """SELECT extract(epoch FROM started_at - created_at) * 1000,
                              extract(epoch FROM finished_at - created_at) * 1000
                       FROM jobs WHERE status = 'succeeded'"""
                )
                rows = cur.fetchall()
        finally:
            for w in workers:
                self.stack.stop(w, grace=3)
            self.stack.stop(api)
        start = [float(r[0]) for r in rows]
        done = [float(r[1]) for r in rows]
        self.results["latency"] = {
            "jobs": len(rows),
            "pause_s": self.plan.latency_pause,
            "worker": "1 process, concurrency 8, JOBQ_SQS_WAIT_SECONDS=20",
            "enqueue_to_start_p50_ms": pct(start, 50),
            "enqueue_to_start_p99_ms": pct(start, 99),
            "enqueue_to_done_p50_ms": pct(done, 50),
            "enqueue_to_done_p99_ms": pct(done, 99),
            "post_p50_ms": pct(post_ms, 50),
            "post_p99_ms": pct(post_ms, 99),
        }
        r = self.results["latency"]
        log(
            f"enqueue->start p50 {r['enqueue_to_start_p50_ms']:.1f} ms p99 "
            f"{r['enqueue_to_start_p99_ms']:.1f} ms; "
            f"->done p50 {r['enqueue_to_done_p50_ms']:.1f} ms"
        )

    # -- 4. end-to-end: worker drain ---------------------------------------------------------

    def preload_jobs(self, queue: tuple[str, str], n: int) -> float:
        """Insert n queued echo jobs straight into PostgreSQL and SendMessageBatch their ids."""
        from app.queue import Outgoing, SqsQueue

        ids = [uuid.uuid4() for _ in range(n)]
        traces = [uuid.uuid4().hex for _ in range(n)]
        t0 = time.perf_counter()
        with pg(self.db) as cur:
            psycopg2.extras.execute_values(
                cur,
                """INSERT INTO jobs
                     (id, task, status, payload, max_attempts, trace_id, published_at)
                   VALUES %s""",
                [(str(i), "echo", "queued", "{}", 3, t) for i, t in zip(ids, traces, strict=True)],
                template="(%s, %s, %s, %s::jsonb, %s, %s, now())",
                page_size=1000,
            )
        sqs = SqsQueue(self.sqs, queue[0])
        items = [Outgoing(i, t) for i, t in zip(ids, traces, strict=True)]
        chunks = [items[k : k + 500] for k in range(0, n, 500)]
        with ThreadPoolExecutor(4) as pool:
            sent = sum(len(c) for c in pool.map(sqs.send_batch, chunks))
        if sent != n:
            raise RuntimeError(f"only {sent} of {n} messages were accepted")
        return time.perf_counter() - t0

    def e2e(self) -> None:
        runs = []
        n = self.plan.e2e_jobs
        for workers, concurrency in self.plan.e2e_configs:
            label = f"w{workers}c{concurrency}"
            queue = self.new_queue(f"e2e-{label}")
            reset_jobs(self.db)
            preload = self.preload_jobs(queue, n)
            self.quiet()
            t_start = time.time()
            t0 = time.monotonic()
            procs = self.start_workers(queue, workers, concurrency)
            trace = CpuTrace([p.pid for p in procs])
            try:
                t_done = self.wait_succeeded(n, max(120, n / 20), procs=procs)
            finally:
                trace.stop()
                for p in procs:
                    self.stack.stop(p)
            stats = self.jobq_span()
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
                "other_processes_cpu_percent": self.others(t_start),
            }
            runs.append(run)
            log(
                f"jobq drain {workers} worker(s) x {concurrency}: {run['jobs_per_s']:,.0f} jobs/s "
                f"(span {run['span_s']:.1f} s, wall incl. start-up {run['wall_s']:.1f} s, "
                f"RSS {run['worker_peak_rss_mb']:.0f} MB, worker CPU "
                f"{run['worker_cpu_ms_per_job']:.1f} ms/job, machine "
                f"{run['machine_busy_percent']:.0f}% busy)"
            )
        self.results["e2e"] = {
            "mode": "preloaded: rows inserted into PostgreSQL and ids sent "
            "with SendMessageBatch before the workers start",
            "runs": runs,
        }

    def jobq_span(self) -> dict[str, Any]:
        with pg(self.db) as cur:
            cur.execute(
                """SELECT count(*), min(started_at), min(finished_at), max(finished_at),
                          min(created_at), sum(CASE WHEN attempts > 1 THEN 1 ELSE 0 END)
                   FROM jobs WHERE status = 'succeeded'"""
            )
            n, first_start, first_done, last_done, first_created, retried = cur.fetchone()
            cur.execute("SELECT count(*) FROM job_attempts WHERE outcome <> 'succeeded'")
            bad_attempts = cur.fetchone()[0]
        done_span = (last_done - first_done).total_seconds()
        return {
            "succeeded": n,
            "span_s": done_span,
            "jobs_per_s": (n - 1) / done_span if done_span > 0 else 0.0,
            "start_to_done_s": (last_done - first_start).total_seconds(),
            "created_to_done_s": (last_done - first_created).total_seconds(),
            "jobs_retried": retried,
            "non_success_attempts": bad_attempts,
            "first_done_ts": first_done.timestamp(),
            "last_done_ts": last_done.timestamp(),
        }

    # -- 5. end-to-end through the API -------------------------------------------------------

    def pipeline(self) -> None:
        n = max(100, self.plan.e2e_jobs // 2)  # bounded by the API's ingest rate: keep it short
        workers, concurrency = self.plan.pipeline_config
        queue = self.new_queue("pipeline")
        reset_jobs(self.db)
        api, url = self.start_api(queue, name="api-pipeline")
        procs = self.start_workers(queue, workers, concurrency)
        try:
            time.sleep(2.0)  # workers up and polling
            gen = self.loadgen(url, "loadgen-pipeline", "--concurrency", "32", "--requests", str(n))
            self.wait_succeeded(n, max(120, n / 20), procs=procs)
        finally:
            for p in procs:
                self.stack.stop(p)
            self.stack.stop(api)
        stats = self.jobq_span()
        stats.pop("first_done_ts")
        stats.pop("last_done_ts")
        created_to_done = stats["created_to_done_s"]
        self.results["pipeline"] = {
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
        r = self.results["pipeline"]
        log(
            f"jobq via API (32 clients) + {workers} worker(s) x {concurrency}: "
            f"{r['jobs_per_s']:,.0f} "
            f"jobs/s first created -> last done ({r['created_to_done_s']:.1f} s); submit "
            f"{r['submit_req_per_s']:,.0f} req/s"
        )

    # -- 6. Celery peer ------------------------------------------------------------------------

    def celery(self) -> None:
        n = self.plan.e2e_jobs
        runs = []
        db_url = "db+" + self.db.replace("postgresql://", "postgresql+psycopg2://", 1)
        for pool, concurrency in self.plan.celery_configs:
            label = f"{pool}{concurrency}"
            url, _ = self.new_queue(f"celery-{label}", redrive=False)
            name = url.rsplit("/", 1)[-1]
            env = dict(
                os.environ,
                BENCH_CELERY_QUEUE=name,
                BENCH_CELERY_QUEUE_URL=url,
                BENCH_SQS_ENDPOINT=self.endpoint,
                BENCH_CELERY_DB_URL=db_url,
                PYTHONPATH=str(BENCH_DIR),
            )
            with pg(self.db) as cur, contextlib.suppress(psycopg2.errors.UndefinedTable):
                cur.execute("TRUNCATE celery_taskmeta")
            pub = self.celery_enqueue(n, env, label)
            argv = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "celery_peer",
                "worker",
                "-Q",
                name,
                "-P",
                pool,
                "-c",
                str(concurrency),
                "--loglevel",
                "WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
            ]
            self.quiet()
            t_start = time.time()
            t0 = time.monotonic()
            proc = self.stack.spawn(
                f"celery-{label}", "celery", argv, env=env, cwd=BENCH_DIR, include_children=True
            )
            trace = CpuTrace([proc.pid], children=True)
            try:
                t_done = self.wait_succeeded(
                    n,
                    max(180, n / 10),
                    table="celery_taskmeta",
                    where="status = 'SUCCESS'",
                    procs=[proc],
                )
            finally:
                trace.stop()
                self.stack.stop(proc, grace=15)
            with pg(self.db) as cur:
                cur.execute(
                    "SELECT count(*), min(date_done), max(date_done) FROM celery_taskmeta "
                    "WHERE status = 'SUCCESS'"
                )
                done, first, last = cur.fetchone()
            span = (last - first).total_seconds()
            # date_done is naive UTC
            cpu = trace.between(
                first.replace(tzinfo=UTC).timestamp(), last.replace(tzinfo=UTC).timestamp()
            )
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
                "other_processes_cpu_percent": self.others(t_start),
            }
            runs.append(run)
            log(
                f"Celery {pool} -c {concurrency}: {run['jobs_per_s']:,.0f} jobs/s "
                f"(span {span:.1f} s, "
                f"wall {run['wall_s']:.1f} s; publish {pub['per_s']:,.0f}/s; RSS incl. pool "
                f"{run['peak_rss_mb_incl_pool']:.0f} MB)"
            )
        import celery
        import kombu

        self.results["celery"] = {
            "version": f"celery {celery.__version__}, kombu {kombu.__version__}",
            "setup": "SQS broker (kombu, predefined_queues, wait_time_seconds=1), "
            "result_backend db+postgresql (SQLAlchemy), defaults otherwise",
            "runs": runs,
        }

    def celery_enqueue(self, n: int, env: dict[str, str], label: str) -> dict[str, Any]:
        """Publish n Celery tasks from a few processes at once (kombu sends one per call)."""
        k = self.plan.celery_enqueue_procs
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        t0 = time.perf_counter()
        procs = [
            self.stack.spawn(
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
                self.stack.stop(p, grace=2)
        elapsed = time.perf_counter() - t0
        return {"published": n, "seconds": elapsed, "per_s": n / elapsed}

    # -- 7. profile (optional) ----------------------------------------------------------------

    def profile(self) -> None:
        from profiling import profile_all

        self.results["profile"] = profile_all(self)


# -- raw limits ------------------------------------------------------------------------------


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
    from app.queue import encode_body

    t0 = time.perf_counter()
    for start in range(0, n, 10):
        entries = [
            {"Id": str(i), "MessageBody": encode_body(uuid.uuid4())}
            for i in range(min(10, n - start))
        ]
        client.send_message_batch(QueueUrl=url, Entries=entries)
    return n / (time.perf_counter() - t0)


def raw_receive_delete_rate(client: Any, url: str, n: int, *, batch_delete: bool) -> float:
    got = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 120
    while got < n and time.monotonic() < deadline:
        msgs = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if batch_delete and msgs:
            client.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)
                ],
            )
        else:
            for m in msgs:
                client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        got += len(msgs)
    return got / (time.perf_counter() - t0)


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001
        return "?"


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jobq benchmark (see bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="~2 minute smoke run")
    parser.add_argument("--jobs", type=int, help="end-to-end job count (default 5000; quick 500)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated phases: limits,ingest,latency,e2e,pipeline,celery,profile",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also count DB/SQS round trips per job and py-spy the API and a worker",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/png go")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp dir with child logs"
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also copy the PNG, table and JSON to bench/published/ (shown in docs/)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be < 20%% busy",
    )
    parser.add_argument(
        "--e2e-configs",
        help="end-to-end worker configs as PROCSxCONCURRENCY, comma-separated (e.g. 1x8,2x32)",
    )
    args = parser.parse_args(argv)

    plan = Plan.make(args.quick, args.jobs)
    if args.e2e_configs:
        try:
            configs = tuple(
                (int(p), int(c)) for p, c in (x.split("x") for x in args.e2e_configs.split(","))
            )
        except ValueError:
            parser.error(f"--e2e-configs: expected e.g. 1x8,2x32, got {args.e2e_configs!r}")
        if any(p < 1 or c < 1 for p, c in configs):
            parser.error("--e2e-configs: process counts and concurrencies must be >= 1")
        plan = dataclasses.replace(plan, e2e_configs=configs)
    phases = ["limits", "ingest", "latency", "e2e", "pipeline", "celery"]
    if args.profile:
        phases.append("profile")
    if args.only:
        phases = [p.strip() for p in args.only.split(",") if p.strip()]

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    stack = Stack(keep_logs=args.keep_logs)
    bench = Bench(plan, stack, args)
    errors: dict[str, str] = {}
    interrupted = False
    started = time.monotonic()
    busy_before = wait_until_idle(args.wait_idle)
    if busy_before > 20:
        log(
            f"warning: the machine is {busy_before:.0f}% busy before the run (other processes); "
            "the numbers will be low"
        )
    try:
        bench.setup()
        bench.results["environment"]["machine_busy_before_percent"] = round(busy_before, 1)
        bench.results["environment"]["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
        stack.start_sampling()
        phase_info = bench.results.setdefault("phases", {})
        for phase in phases:
            quiet = wait_quiet(stack, args.wait_idle) if args.wait_idle else None
            log(f"--- {phase}")
            t0 = time.time()
            try:
                getattr(bench, phase)()
            except KeyboardInterrupt:
                raise
            except Exception:  # noqa: BLE001 - record it and go on with the other phases
                errors[phase] = traceback.format_exc()
                log(f"phase {phase} failed:\n{errors[phase]}")
            finally:
                stack.foreign.sample(stack.workdir)
                other = stack.foreign.percent_between(t0, time.time())
                phase_info[phase] = {
                    "seconds": round(time.time() - t0, 1),
                    "other_processes_cpu_percent": other,
                    "other_processes_cpu_percent_before": quiet,
                }
                if other is not None and other > 15:
                    log(f"warning: other processes used {other:.0f}% CPU during {phase}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything")
    finally:
        previous = signal.signal(
            signal.SIGINT, signal.SIG_IGN
        )  # a second Ctrl-C must not skip cleanup
        try:
            stack.close()
        finally:
            signal.signal(signal.SIGINT, previous)

    results = bench.results
    results["duration_s"] = time.monotonic() - started
    if errors:
        results["errors"] = errors
    if interrupted:
        results["interrupted"] = True
    results["summary"] = summarize(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        plot(results, args.out / "latest.png")
    except Exception:  # noqa: BLE001
        log("plot failed:\n" + traceback.format_exc())
    table = render_table(results)
    (args.out / "latest.txt").write_text(table + "\n")
    if args.publish:
        published = BENCH_DIR / "published"
        published.mkdir(exist_ok=True)
        for name in ("latest.json", "latest.txt", "latest.png"):
            if (args.out / name).exists():
                shutil.copyfile(args.out / name, published / name.replace("latest", "benchmarks"))
        log(f"published to {published}")
    print()
    print(table)
    print()
    log(
        f"wrote {args.out / 'latest.json'}, {args.out / 'latest.png'} "
        f"in {results['duration_s'] / 60:.1f} min"
    )
    return 130 if interrupted else (1 if errors else 0)


if __name__ == "__main__":
    sys.exit(main())
