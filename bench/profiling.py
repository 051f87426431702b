"""`run.py --profile`: count round trips per job, and sample the API and a worker with py-spy.

Round trips: PostgreSQL logs every statement (log_statement=all, only for this phase) and an
SQS proxy on 127.0.0.1 counts every call by its X-Amz-Target; the API and the worker are
measured in separate windows (dispatcher and DLQ consumer off) so each count is theirs alone.
py-spy: `py-spy record --nonblocking` on the API under 32 clients, and on a draining worker;
collapsed stacks go to bench/results/profile-*.txt and a summary into latest.json.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from stack import BENCH_DIR

if TYPE_CHECKING:
    from run import Bench

RESULTS_DIR = BENCH_DIR / "results"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def out_dir(bench: Bench) -> Path:
    """Where the stacks go: next to latest.json (`run.py --out`)."""
    return Path(getattr(bench.args, "out", RESULTS_DIR))


# -- SQS call counter ------------------------------------------------------------------------


class CountingProxy:
    """HTTP proxy in front of the SQS server that counts calls by X-Amz-Target."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.counts: Counter[str] = Counter()
        self.received: Counter[str] = Counter()  # messages returned by ReceiveMessage
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.local = threading.local()

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self.lock:
            return Counter(self.counts), Counter(self.received)

    def start(self) -> CountingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "?").split(".")[-1]
                conn = getattr(proxy.local, "conn", None)
                if conn is None:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    proxy.local.conn = conn
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                try:
                    conn.request("POST", self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    proxy.local.conn = None
                    self.send_error(502)
                    return
                n_msgs = 0
                if target == "ReceiveMessage":
                    with contextlib.suppress(ValueError):
                        n_msgs = len(json.loads(data or b"{}").get("Messages", []))
                with proxy.lock:
                    proxy.counts[target] += 1
                    if target == "ReceiveMessage":
                        proxy.received["messages"] += n_msgs
                        proxy.received["empty" if n_msgs == 0 else "non_empty"] += 1
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="sqs-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# -- PostgreSQL statement counter --------------------------------------------------------------

_STATEMENT = re.compile(r"\] (\S*) LOG:  statement: (.*)$")


def classify(sql: str) -> str:
    s = " ".join(sql.split())
    u = s.upper()
    for prefix in ("BEGIN", "COMMIT", "ROLLBACK", "SELECT 1"):
        if u == prefix or u.startswith(prefix + ";"):
            return prefix
    if u.startswith("INSERT INTO JOBS"):
        return "INSERT INTO jobs ... RETURNING"
    if u.startswith("INSERT INTO JOB_ATTEMPTS"):
        return "INSERT INTO job_attempts"
    if u.startswith("UPDATE JOBS SET PUBLISHED_AT"):
        return "UPDATE jobs SET published_at (publisher)"
    if u.startswith("UPDATE JOBS SET LEASE_EXPIRES_AT"):
        return "UPDATE jobs SET lease (heartbeat)"
    if u.startswith("WITH V AS (") and "UNNEST(" in u:
        # Checked before the claim: the batched finish also locks rows and names 'running'.
        return "finish: WITH v AS (unnest ...) UPDATE jobs, INSERT job_attempts"
    if "UPDATE JOBS AS J SET STATUS = 'RUNNING'" in u or (
        "FOR UPDATE" in u and "RUNNING" in u and u.startswith("WITH")
    ):
        return "claim: WITH prev ... UPDATE jobs ... RETURNING"
    if u.startswith("SELECT") and "FOR UPDATE SKIP LOCKED" in u:
        return "SELECT ... FOR UPDATE SKIP LOCKED (dispatcher)"
    s = re.sub(r"'[^']*'", "?", s)
    s = re.sub(r"\b\d+(\.\d+)?\b", "?", s)
    return s[:80]


class StatementLog:
    """Reads what PostgreSQL logged for application_name 'jobq' since mark()."""

    def __init__(self, log_path: Path) -> None:
        self.path = log_path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def read(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
        current: list[str] | None = None  # a statement being collected (continuation lines)
        for line in [*text.splitlines(), ""]:
            if current is not None and line.startswith("\t"):
                current.append(line)
                continue
            if current is not None:
                counts[classify(" ".join(current))] += 1
                current = None
            m = _STATEMENT.search(line)
            if m and m.group(1) == "jobq":
                current = [m.group(2)]
        return counts


def set_statement_logging(db: str, on: bool) -> None:
    from run import pg

    with pg(db) as cur:
        if on:
            cur.execute("ALTER SYSTEM SET log_statement = 'all'")
            cur.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '")
        else:
            cur.execute("ALTER SYSTEM RESET log_statement")
            cur.execute("ALTER SYSTEM RESET log_line_prefix")
        cur.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)


def per_job(counts: Counter[str], jobs: int) -> dict[str, float]:
    out = {k: round(v / jobs, 2) for k, v in counts.most_common()}
    out["TOTAL"] = round(sum(counts.values()) / jobs, 2)
    return out


def round_trips(bench: Bench) -> dict[str, Any]:
    """Statements and SQS calls per job: API alone (1 and 32 clients), then a worker alone."""
    from run import log, reset_jobs, scalar

    stmts = StatementLog(bench.stack.pg_log)
    proxy = CountingProxy(bench.endpoint).start()
    real_endpoint = bench.endpoint
    out: dict[str, Any] = {}
    set_statement_logging(bench.db, True)
    try:
        bench.endpoint = proxy.endpoint  # the children talk to SQS through the proxy
        queue = bench.new_queue("roundtrips")
        reset_jobs(bench.db)
        api, url = bench.start_api(queue, name="api-roundtrips", JOBQ_DISPATCHER="false")
        try:
            for clients, n in ((1, 200), (32, 1000)):
                reset_jobs(bench.db)
                time.sleep(0.5)
                stmts.mark()
                before, _ = proxy.snapshot()
                bench.loadgen(
                    url, f"loadgen-rt{clients}", "--concurrency", str(clients), "--requests", str(n)
                )
                deadline = time.monotonic() + 30
                while (
                    scalar(bench.db, "SELECT count(*) FROM jobs WHERE published_at IS NULL")
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                time.sleep(0.3)
                after, _ = proxy.snapshot()
                out[f"api_{clients}_clients"] = {
                    "jobs": n,
                    "db_statements_per_job": per_job(stmts.read(), n),
                    "sqs_calls_per_job": per_job(after - before, n),
                }
                log(f"API, {clients} client(s): {out[f'api_{clients}_clients']}")
        finally:
            bench.stack.stop(api)
        # The worker alone: preloaded jobs on a fresh queue, DLQ consumer off.
        n = 500
        queue = bench.new_queue("roundtrips-worker")
        reset_jobs(bench.db)
        bench.preload_jobs(queue, n)
        time.sleep(0.3)
        stmts.mark()
        before, recv_before = proxy.snapshot()
        workers = bench.start_workers(queue, 1, 8, JOBQ_DLQ_CONSUMER="false")
        try:
            bench.wait_succeeded(n, 120, procs=workers)
            time.sleep(0.3)
        finally:
            for w in workers:
                bench.stack.stop(w)
        after, recv_after = proxy.snapshot()
        out["worker_1x8"] = {
            "jobs": n,
            "db_statements_per_job": per_job(stmts.read(), n),
            "sqs_calls_per_job": per_job(after - before, n),
            "receive": dict(recv_after - recv_before),
        }
        log(f"worker 1x8: {out['worker_1x8']}")
    finally:
        bench.endpoint = real_endpoint
        set_statement_logging(bench.db, False)
        proxy.stop()
    return out


# -- py-spy ---------------------------------------------------------------------------------------


def py_spy() -> str | None:
    exe = Path(sys.executable).with_name("py-spy")
    return str(exe) if exe.exists() else shutil.which("py-spy")


def record(
    pid: int, seconds: float, out: Path, *, idle: bool = False, gil: bool = False
) -> subprocess.Popen[bytes]:
    """py-spy record: `gil` samples only the thread holding the GIL (where Python CPU goes);
    `idle` also samples waiting threads (where wall time goes)."""
    argv = [
        py_spy() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    if gil:
        argv.append("--gil")
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )


_THREAD = re.compile(r'^Thread (\d+|0x[0-9a-fA-F]+) \([^)]*\): "([^"]*)"', re.M)


def thread_names(pid: int, tries: int = 3) -> dict[int, str]:
    """Native thread id -> Python thread name (from `py-spy dump`; retried, it can fail under
    load)."""
    names: dict[int, str] = {}
    for _ in range(tries):
        try:
            out = subprocess.run(
                [py_spy() or "py-spy", "dump", "--pid", str(pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        names.update({int(tid, 0): name for tid, name in _THREAD.findall(out)})
        if names:
            break
        time.sleep(0.2)
    return names


def thread_group(name: str) -> str:
    return re.sub(r"([-_ ]?[0-9a-f]{8}-[0-9a-f-]{27,}|_\d+)$", "", name) or name


def thread_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """CPU used by each (named) thread of `pid` over `seconds`, as % of one core."""
    import psutil

    names = thread_names(pid)
    proc = psutil.Process(pid)
    before = {t.id: t.user_time + t.system_time for t in proc.threads()}
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {t.id: t.user_time + t.system_time for t in proc.threads()}
    cpu1 = sum(proc.cpu_times()[:2])
    wall = time.monotonic() - t0
    groups: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for tid, total in after.items():
        group = thread_group(names.get(tid, "(started after the snapshot)"))
        groups[group] += total - before.get(tid, 0.0)
        counts[group] += 1
    accounted = sum(groups.values())
    groups["(threads that ended meanwhile)"] = max(0.0, (cpu1 - cpu0) - accounted)
    return {
        "process_cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "threads": [
            {"thread": g, "count": counts.get(g, 0), "cpu_percent": round(100 * v / wall, 1)}
            for g, v in groups.most_common()
            if v > 0.005 * wall
        ],
    }


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

PACKAGES = (
    ("psycopg2", "psycopg2 (DB driver, incl. waiting on PostgreSQL)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("botocore", "botocore/boto3 (SQS client)"),
    ("boto3", "botocore/boto3 (SQS client)"),
    ("urllib3", "urllib3 (HTTP to SQS)"),
    ("pydantic", "pydantic"),
    ("fastapi", "FastAPI"),
    ("starlette", "Starlette"),
    ("uvicorn", "uvicorn/h11"),
    ("h11", "uvicorn/h11"),
    ("anyio", "anyio (threadpool hand-off)"),
    ("asyncio", "asyncio"),
    ("logging", "logging"),
    ("json", "json"),
    ("threading.py", "threading (locks, waits)"),
    ("queue.py", "threading (locks, waits)"),
    ("concurrent/futures", "threading (locks, waits)"),
    ("socket.py", "socket"),
    ("ssl.py", "socket"),
    ("http/client", "http.client"),
    ("email/", "http.client"),
    ("app/", "jobq app/"),
    ("worker/", "jobq worker/"),
    ("uuid", "uuid"),
)


def package_of(file: str) -> str:
    for needle, name in PACKAGES:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1]


def summarize_stacks(path: Path, top: int = 25) -> dict[str, Any]:
    """Self time by package, and inclusive time of the heaviest functions."""
    total = 0
    self_by_pkg: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_thread_root: Counter[str] = Counter()
    if not path.exists():
        return {"error": f"{path.name} was not written (py-spy failed?)"}
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        parsed = []
        for f in frames:
            m = _FRAME.match(f.strip())
            parsed.append((m.group("func"), m.group("file")) if m else (f, ""))
        func, file = parsed[-1]
        self_by_pkg[package_of(file)] += count
        seen = set()
        for func, file in parsed:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
        # What the thread is: the first frame in our code or a known loop.
        root = next(
            (
                f"{fn} ({fl})"
                for fn, fl in parsed
                if fl.startswith(("app/", "worker/")) or "/app/" in fl or "/worker/" in fl
            ),
            None,
        )
        by_thread_root[root or f"{parsed[min(2, len(parsed) - 1)][0]}"] += count

    def share(c: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "self_percent_by_package": share(self_by_pkg, 20),
        "inclusive_percent_top": share(inclusive, top),
        "entry_points_percent": share(by_thread_root, 12),
    }


def spy_api(bench: Bench, seconds: float) -> dict[str, Any]:
    from run import reset_jobs

    queue = bench.new_queue("spy-api")
    reset_jobs(bench.db)
    api, url = bench.start_api(queue, name="api-spy")
    out: dict[str, Any] = {}
    try:
        bench.loadgen(url, "loadgen-spy-warm", "--concurrency", "4", "--requests", "200")
        for clients in (1, 32):
            gen = bench.stack.spawn(
                f"loadgen-spy{clients}",
                "loadgen",
                [
                    sys.executable,
                    str(BENCH_DIR / "loadgen.py"),
                    "--url",
                    url,
                    "--concurrency",
                    str(clients),
                    "--duration",
                    str(seconds + 5),
                    "--warmup",
                    "1",
                ],
                env=bench.client_env(),
                capture=True,
            )
            time.sleep(2.0)
            threads = thread_cpu(api.pid, 3.0)
            path = out_dir(bench) / f"profile-api-{clients}clients.txt"
            spy = record(api.pid, seconds, path, gil=True)
            spy.wait(seconds + 30)
            gen_out, _ = gen.popen.communicate(timeout=seconds + 60)
            bench.stack.stop(gen)
            out[f"{clients}_clients"] = {
                "load": json.loads(gen_out.decode().strip().splitlines()[-1]),
                "thread_cpu": threads,
                "gil_samples": summarize_stacks(path),
                "stacks_file": _rel(path),
            }
    finally:
        bench.stack.stop(api)
    return out


def spy_worker(bench: Bench, seconds: float) -> dict[str, Any]:
    from run import reset_jobs

    queue = bench.new_queue("spy-worker")
    reset_jobs(bench.db)
    n = 6000
    bench.preload_jobs(queue, n)
    workers = bench.start_workers(queue, 1, 8)
    out: dict[str, Any] = {}
    try:
        time.sleep(2.5)  # imports done, draining
        out["thread_cpu"] = thread_cpu(workers[0].pid, 3.0)
        path = out_dir(bench) / "profile-worker-1x8.txt"
        spy = record(workers[0].pid, seconds, path, gil=True)
        spy.wait(seconds + 30)
        path_idle = out_dir(bench) / "profile-worker-1x8-wall.txt"
        spy = record(workers[0].pid, min(3, seconds), path_idle, idle=True)
        spy.wait(seconds + 30)
        out["gil_samples"] = summarize_stacks(path)
        out["wall_incl_idle_threads"] = summarize_stacks(path_idle)
        out["stacks_files"] = [_rel(p) for p in (path, path_idle)]
    finally:
        for w in workers:
            bench.stack.stop(w, grace=3)
    return out


def micro_costs(bench: Bench) -> dict[str, dict[str, float]]:
    """Wall and CPU milliseconds per call of the building blocks, in this process, idle machine."""
    import uuid

    import psycopg2
    from run import reset_jobs
    from sqlalchemy import text

    from app.config import Settings
    from app.queue import Outgoing
    from app.runtime import build_runtime

    queue = bench.new_queue("micro")
    reset_jobs(bench.db)
    settings = Settings(
        database_url=bench.db,
        sqs_queue_url=queue[0],
        sqs_dlq_url=queue[1],
        sqs_endpoint_url=bench.endpoint,
    )
    rt = build_runtime(settings)
    client, url = rt.sqs.client, queue[0]
    out: dict[str, dict[str, float]] = {}

    def measure(label: str, fn: Any, n: int) -> None:
        fn()
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        out[label] = {
            "wall_ms": round(1000 * (time.perf_counter() - w0) / n, 3),
            "cpu_ms": round(1000 * (time.process_time() - c0) / n, 3),
        }

    def one() -> list[Outgoing]:
        return [Outgoing(uuid.uuid4(), uuid.uuid4().hex)]

    try:
        measure("boto3 SendMessageBatch, 1 message", lambda: rt.sqs.send_batch(one()), 200)
        measure(
            "boto3 SendMessageBatch, 10 messages",
            lambda: rt.sqs.send_batch([o for _ in range(10) for o in one()]),
            100,
        )
        for _ in range(60):
            rt.sqs.send_batch([o for _ in range(10) for o in one()])

        def receive_delete_each() -> None:
            for m in rt.sqs.receive(10, 0):
                rt.sqs.delete(m)

        def receive_delete_batch() -> None:
            msgs = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if msgs:
                client.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(msgs)
                    ],
                )

        measure("boto3 ReceiveMessage(10) + 10 x DeleteMessage", receive_delete_each, 25)
        measure("boto3 ReceiveMessage(10) + DeleteMessageBatch(10)", receive_delete_batch, 25)

        def orm_txn() -> None:
            with rt.sessions.begin() as session:
                session.execute(text("SELECT 1"))

        measure("SQLAlchemy session.begin() + 1 statement + commit (pre-ping)", orm_txn, 300)
        conn = psycopg2.connect(bench.db)
        cur = conn.cursor()

        def raw_insert() -> None:
            cur.execute(
                "INSERT INTO jobs (id, task, status, payload, max_attempts) "
                "VALUES (%s, 'echo', 'queued', '{}'::jsonb, 3)",
                (str(uuid.uuid4()),),
            )
            conn.commit()

        measure("psycopg2 INSERT + COMMIT", raw_insert, 300)
        conn.close()
        from app.jobs.schemas import JobCreate
        from app.jobs.service import JobService

        class NoPublish:
            def publish(self, item: Any) -> None:
                pass

        svc = JobService(rt.sessions, rt.registry, NoPublish(), settings)  # type: ignore[arg-type]
        req = JobCreate(task="echo", payload={})
        measure(
            "JobService.submit without publishing (validate, ORM insert, commit)",
            lambda: svc.submit(req, trace_id=uuid.uuid4().hex),
            300,
        )
    finally:
        rt.close()
        reset_jobs(bench.db)
    return out


def profile_all(bench: Bench) -> dict[str, Any]:
    from run import log

    out_dir(bench).mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    try:
        result["micro_costs"] = micro_costs(bench)
        for k, v in result["micro_costs"].items():
            log(f"{k}: {v['wall_ms']:.2f} ms wall, {v['cpu_ms']:.2f} ms CPU")
    except Exception as exc:  # noqa: BLE001 - the app's internals may change; keep going
        result["micro_costs"] = {"error": repr(exc)}
    result["round_trips"] = round_trips(bench)
    if py_spy() is None:
        result["py_spy"] = "py-spy not installed (pip install py-spy)"
        return result
    seconds = 5.0 if bench.plan.quick else 8.0
    result["api"] = spy_api(bench, seconds)
    for k, v in result["api"].items():
        log(f"API {k} threads: {json.dumps(v['thread_cpu'])}")
        top = v["gil_samples"].get("self_percent_by_package", [])[:8]
        log(f"py-spy --gil API {k}: {json.dumps(top)}")
    result["worker"] = spy_worker(bench, seconds)
    log(f"worker threads: {json.dumps(result['worker']['thread_cpu'])}")
    log(
        f"py-spy --gil worker: "
        f"{json.dumps(result['worker']['gil_samples'].get('self_percent_by_package', [])[:8])}"
    )
    return result
