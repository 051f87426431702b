"""`profile` round trips: PostgreSQL statements and SQS calls per job, API and worker apart.

PostgreSQL logs every statement (log_statement=all, only for this measurement) and an SQS proxy
on 127.0.0.1 counts every call by its X-Amz-Target; the API and the worker are measured in
separate windows (dispatcher and DLQ consumer off) so each count is theirs alone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness import Bench, Endpoints
from measure import log

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


def set_statement_logging(bench: Bench, on: bool) -> None:
    """Turn PostgreSQL's log of every statement (with the application name) on or off."""
    with bench.cursor() as cur:
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
    if bench.stack.pg_log is None:
        raise RuntimeError("round trips need the embedded PostgreSQL's log")
    stmts = StatementLog(bench.stack.pg_log)
    proxy = CountingProxy(bench.endpoints.sqs_endpoint).start()
    set_statement_logging(bench, True)
    try:
        # The children talk to SQS through the proxy.
        with bench.through(Endpoints(bench.endpoints.database_url, proxy.endpoint)):
            out = api_round_trips(bench, stmts, proxy)
            out["worker_1x8"] = worker_round_trips(bench, stmts, proxy)
    finally:
        set_statement_logging(bench, False)
        proxy.stop()
    return out


def api_round_trips(bench: Bench, stmts: StatementLog, proxy: CountingProxy) -> dict[str, Any]:
    """The API alone (dispatcher off), 200 jobs from 1 client and 1000 from 32."""
    out: dict[str, Any] = {}
    queue = bench.new_queue("roundtrips")
    bench.reset_jobs()
    api, url = bench.start_api(queue, name="api-roundtrips", JOBQ_DISPATCHER="false")
    try:
        for clients, n in ((1, 200), (32, 1000)):
            bench.reset_jobs()
            time.sleep(0.5)
            stmts.mark()
            before, _ = proxy.snapshot()
            bench.loadgen(
                url, f"loadgen-rt{clients}", "--concurrency", str(clients), "--requests", str(n)
            )
            deadline = time.monotonic() + 30
            while bench.unpublished() and time.monotonic() < deadline:
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
    return out


def worker_round_trips(bench: Bench, stmts: StatementLog, proxy: CountingProxy) -> dict[str, Any]:
    """The worker alone: preloaded jobs on a fresh queue, DLQ consumer off."""
    n = 500
    queue = bench.new_queue("roundtrips-worker")
    bench.reset_jobs()
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
    out = {
        "jobs": n,
        "db_statements_per_job": per_job(stmts.read(), n),
        "sqs_calls_per_job": per_job(after - before, n),
        "receive": dict(recv_after - recv_before),
    }
    log(f"worker 1x8: {out}")
    return out
