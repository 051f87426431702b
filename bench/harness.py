"""What every phase uses: the servers, fresh queues, jobq's API and workers as children.

A phase is a function `(Bench) -> dict` (see phases/__init__.py). Children (API, workers,
Celery) and the raw limits reach PostgreSQL and SQS at `bench.endpoints`; the harness's own
bookkeeping (emptying tables, counting rows, preloading jobs, creating queues) talks to the
servers directly (`bench.servers`). `with bench.through(Endpoints(...))` runs a phase against
something in front of the servers (a counting or latency-adding proxy) without changing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
from measure import log, wait_quiet
from plan import Plan
from stack import BENCH_DIR, REPO_DIR, Proc, Stack, free_port, jobq_command, wait_http


@dataclass(frozen=True)
class Endpoints:
    """Where PostgreSQL and SQS are reached: the servers themselves, or a proxy in front."""

    database_url: str
    sqs_endpoint: str


@contextlib.contextmanager
def pg(url: str) -> Iterator[Any]:
    """An autocommit psycopg2 cursor on `url`, closed afterwards."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        yield conn.cursor()
    finally:
        conn.close()


def log_tail(proc: Proc, chars: int = 1500) -> str:
    """The end of a child's log (for error messages)."""
    try:
        return proc.log_path.read_text(errors="replace")[-chars:] if proc.log_path else ""
    except OSError:
        return ""


def git_describe() -> str:
    """`git describe` of the work tree, or "?"."""
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


class Bench:
    """One benchmark run: owns the stack, the endpoints and the results."""

    def __init__(self, plan: Plan, stack: Stack, *, out_dir: Path, wait_idle: float = 0) -> None:
        self.plan = plan
        self.stack = stack
        self.out_dir = out_dir  # latest.json and the py-spy stacks
        self.wait_idle = wait_idle
        self.results: dict[str, Any] = {}
        self.servers = Endpoints("", "")
        self.endpoints = self.servers
        self.sqs: Any = None  # boto3 client on the SQS server itself (bookkeeping)
        self._queue_seq = 0
        # The API refuses to start without keys (JOBQ_AUTH=required): benchmark it as deployed,
        # with one submit key, but without the per-key submit rate limit (it would cap req/s).
        self.api_key = secrets.token_hex(16)
        self.auth_headers = {"authorization": f"Bearer {self.api_key}"}

    # -- servers and endpoints ---------------------------------------------------------

    def setup(self) -> None:
        """Start PostgreSQL and fauxqs (or use SQS_ENDPOINT_URL), migrate, record the setup."""
        from app.migrate import upgrade

        for var, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
            os.environ.setdefault(var, value)
        os.environ.setdefault("AWS_REGION", "us-east-1")
        t0 = time.perf_counter()
        db = self.stack.start_postgres()
        log(f"PostgreSQL (pgserver) up in {time.perf_counter() - t0:.1f} s: {db}")
        if os.environ.get("SQS_ENDPOINT_URL"):
            endpoint = os.environ["SQS_ENDPOINT_URL"]
            sqs_server = f"external ({endpoint})"
        else:
            t0 = time.perf_counter()
            endpoint = self.stack.start_fauxqs()
            sqs_server = "fauxqs 2.4.1 (Node 22), 127.0.0.1"
            log(f"fauxqs up in {time.perf_counter() - t0:.1f} s: {endpoint}")
        upgrade(db)
        self.servers = self.endpoints = Endpoints(db, endpoint)
        self.sqs = self.sqs_client(endpoint)
        self.results["environment"] = self._environment(sqs_server)

    def _environment(self, sqs_server: str) -> dict[str, Any]:
        import app

        with self.cursor() as cur:
            cur.execute("SELECT version()")
            pg_version = cur.fetchone()[0].split(" on ")[0]
            cur.execute("SHOW fsync")
            fsync = cur.fetchone()[0]
            cur.execute("SHOW synchronous_commit")
            sync_commit = cur.fetchone()[0]
        return {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.plan.quick else "full",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "postgresql": f"{pg_version} (pgserver, Unix socket, fsync={fsync}, "
            f"synchronous_commit={sync_commit})",
            "sqs_server": sqs_server,
            "git": os.environ.get("BENCH_REVISION") or git_describe(),
            "jobq_installed_from": str(Path(app.__file__).resolve().parent.parent),
        }

    @staticmethod
    def sqs_client(endpoint: str) -> Any:
        """A boto3 SQS client on `endpoint`, configured as jobq configures its own."""
        from app.config import Settings
        from app.sqs.queue import make_sqs_client

        return make_sqs_client(Settings(sqs_endpoint_url=endpoint))

    def measured_sqs(self) -> Any:
        """A boto3 client on `endpoints` (the server's own client unless behind a proxy)."""
        if self.endpoints.sqs_endpoint == self.servers.sqs_endpoint:
            return self.sqs
        return self.sqs_client(self.endpoints.sqs_endpoint)

    @contextlib.contextmanager
    def through(self, endpoints: Endpoints) -> Iterator[None]:
        """Children started (and raw limits measured) inside talk to `endpoints`."""
        previous, self.endpoints = self.endpoints, endpoints
        try:
            yield
        finally:
            self.endpoints = previous

    # -- bookkeeping on the servers ----------------------------------------------------

    def cursor(self) -> contextlib.AbstractContextManager[Any]:
        """An autocommit cursor on the PostgreSQL server itself."""
        return pg(self.servers.database_url)

    def scalar(self, sql: str, params: Any = None) -> Any:
        """The first column of the first row of `sql` (None if no row)."""
        with self.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None

    def reset_jobs(self) -> None:
        """Empty the jobs tables (every phase starts from none)."""
        with self.cursor() as cur:
            cur.execute("TRUNCATE jobs, job_attempts CASCADE")  # and what references jobs

    def unpublished(self) -> int:
        """Jobs committed but not yet confirmed sent to SQS."""
        return int(self.scalar("SELECT count(*) FROM jobs WHERE published_at IS NULL"))

    def new_queue(self, label: str, *, redrive: bool = True) -> tuple[str, str]:
        """A fresh (queue URL, DLQ URL); without `redrive` a plain queue and no DLQ."""
        from app.sqs.queue import ensure_queues

        self._queue_seq += 1
        name = f"bench-{self._queue_seq:02d}-{label}"
        if not redrive:
            return self.sqs.create_queue(QueueName=name)["QueueUrl"], ""
        return ensure_queues(self.sqs, name, name + "-dlq", max_receive_count=3)

    def preload_jobs(self, queue: tuple[str, str], n: int) -> float:
        """Insert n queued echo jobs straight into PostgreSQL and SendMessageBatch their ids."""
        from app.sqs.queue import Outgoing, SqsQueue

        ids = [uuid.uuid4() for _ in range(n)]
        traces = [uuid.uuid4().hex for _ in range(n)]
        t0 = time.perf_counter()
        with self.cursor() as cur:
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
        size = max(10, min(500, n // 40 * 10))  # at least 4 chunks: the pool sends them at once
        chunks = [items[k : k + size] for k in range(0, n, size)]
        with ThreadPoolExecutor(4) as pool:
            sent = sum(len(c) for c in pool.map(sqs.send_batch, chunks))
        if sent != n:
            raise RuntimeError(f"only {sent} of {n} messages were accepted")
        return time.perf_counter() - t0

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
        with self.cursor() as cur:
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

    # -- jobq as children --------------------------------------------------------------

    def jobq_env(self, queue: tuple[str, str], **extra: str) -> dict[str, str]:
        """The environment of a jobq child on `queue`, reaching the servers at `endpoints`."""
        env = dict(os.environ)
        for var in ("JOBQ_TASK_MODULES", "HOST"):
            env.pop(var, None)
        env.update(
            DATABASE_URL=self.endpoints.database_url,
            SQS_QUEUE_URL=queue[0],
            SQS_DLQ_URL=queue[1],
            SQS_ENDPOINT_URL=self.endpoints.sqs_endpoint,
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
        """`jobq api` on a free port; (its process, its base URL) once /readyz answers."""
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
        """`count` `jobq worker` processes, `concurrency` each, long poll `wait` s."""
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

    # -- load generators and other short-lived children --------------------------------

    def client_env(self) -> dict[str, str]:
        """The environment of a load generator (with the API key)."""
        return dict(os.environ, BENCH_API_KEY=self.api_key)

    def loadgen_argv(self, url: str, *extra: str) -> list[str]:
        """The command line of `loadgen.py` against `url`."""
        return [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", url, *extra]

    def run_child_json(
        self, name: str, argv: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO_DIR
    ) -> dict[str, Any]:
        """Run a child to its end; the JSON object on the last line of its stdout."""
        proc = self.stack.spawn(name, "loadgen", argv, env=env, cwd=cwd, capture=True)
        try:
            out, _ = proc.popen.communicate(timeout=timeout)
        finally:
            self.stack.stop(proc, grace=2)
        if proc.popen.returncode != 0:
            raise RuntimeError(f"{name} exited {proc.popen.returncode}: {log_tail(proc, 2000)}")
        return last_json_line(out)

    def loadgen(self, url: str, name: str, *extra: str, timeout: float = 600) -> dict[str, Any]:
        """Run `loadgen.py` against `url` to its end; its JSON result."""
        return self.run_child_json(name, self.loadgen_argv(url, *extra), self.client_env(), timeout)

    # -- how busy the machine is -------------------------------------------------------

    def quiet(self) -> None:
        """With --wait-idle: wait for other processes to calm down before a measurement."""
        if self.wait_idle:
            wait_quiet(self.stack, self.wait_idle)

    def others(self, t0: float) -> float | None:
        """CPU % (of one core) used by processes that are not ours since wall-clock t0."""
        self.stack.foreign.sample(self.stack.workdir)
        return self.stack.foreign.percent_between(t0, time.time())


def last_json_line(out: bytes) -> dict[str, Any]:
    """The JSON object a child printed last on stdout."""
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
