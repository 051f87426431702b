"""Test helpers, one copy each: polling with a deadline (wait_for, wait_for_status), SQL and
queue reads, Prometheus text, settings as environment, child processes and their reaping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from app.config import Settings

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

# API keys the auth-enabled tests configure (16+ characters, as the API requires).
READ_KEY = "read-key-0123456789abcdef"
SUBMIT_KEY = "submit-key-0123456789abcdef"


def wait_for(
    check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or check}; last={last!r}")


def wait_for_status(api: Any, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
    """GET /jobs/{id} (`api`: a TestClient or httpx.Client) until its status is one of
    `statuses`, or any final one when none are given; the job as the API shows it."""
    wanted = set(statuses) or FINAL_STATUSES

    def reached() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"/jobs/{job_id}").json()
        return job if job["status"] in wanted else None

    return wait_for(reached, timeout=timeout, what=f"job {job_id} to reach {sorted(wanted)}")


def scalar(db: Any, sql: str, *args: Any) -> Any:
    """The one value `sql` selects (a psycopg2 connection)."""
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def rows(db: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Every row `sql` selects (a psycopg2 connection)."""
    with db.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def queue_depth(sqs: Any, queue_url: str | None = None) -> dict[str, int]:
    """Messages on a queue (`sqs`: app.sqs.queue.SqsQueue; its own queue when no URL) by
    state: visible, in_flight (received, not deleted) and delayed."""
    attrs = sqs.attributes(queue_url)
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def queue_is_empty(sqs: Any, queue_url: str | None = None) -> bool:
    """True when the queue holds no message in any state."""
    return not any(queue_depth(sqs, queue_url).values())


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value in Prometheus exposition text (label order does not matter); fails
    the test when it is not exposed."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} not exposed")


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 20.0, group: bool = False) -> int:
    """SIGTERM `proc` (its whole process group with `group`: started with
    start_new_session=True), SIGKILL it when it outlives `grace`; its exit code once reaped."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.poll() is None:
        send(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return proc.wait(timeout=30)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process see `settings`."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        SQS_QUEUE_URL=settings.sqs_queue_url,
        SQS_DLQ_URL=settings.sqs_dlq_url,
        SQS_ENDPOINT_URL=settings.sqs_endpoint_url or "",
        AWS_REGION=settings.aws_region,
        JOBQ_MAX_ATTEMPTS=str(settings.max_attempts),
        JOBQ_MAX_CRASHES=str(settings.max_crashes),
        JOBQ_LEASE_MARGIN_SECONDS=str(settings.lease_margin_seconds),
        JOBQ_ISOLATE_CRASHED=str(settings.isolate_crashed).lower(),
        JOBQ_SQS_WAIT_SECONDS=str(settings.sqs_wait_seconds),
        JOBQ_VISIBILITY_TIMEOUT_SECONDS=str(settings.visibility_timeout_seconds),
        JOBQ_HEARTBEAT_SECONDS=str(settings.effective_heartbeat_seconds),
        JOBQ_BACKOFF_BASE_SECONDS=str(settings.backoff_base_seconds),
        JOBQ_BACKOFF_CAP_SECONDS=str(settings.backoff_cap_seconds),
        JOBQ_WORKER_CONCURRENCY=str(settings.worker_concurrency),
        JOBQ_SHUTDOWN_GRACE_SECONDS=str(settings.shutdown_grace_seconds),
        JOBQ_RECONCILE_INTERVAL_SECONDS=str(settings.reconcile_interval_seconds),
        JOBQ_RECONCILE_MARGIN_SECONDS=str(settings.reconcile_margin_seconds),
        JOBQ_TASK_MODULES=settings.task_modules,
        JOBQ_LOG_FORMAT="json",
        JOBQ_METRICS_PORT="0",
        JOBQ_AUTH=settings.auth,
        JOBQ_API_KEYS=settings.api_keys,
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start_worker_process(
    settings: Settings,
    log_path: Path,
    *,
    python: str | Path = sys.executable,
    cwd: Path = ROOT,
    **extra: str,
) -> subprocess.Popen[bytes]:
    """`jobq worker` in its own process (of `python`: another environment's), logging to
    `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(
        [str(python), "-m", "app.cli", "worker"],
        env=settings_env(settings, **extra),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def job_statuses(db: Any, ids: list[str]) -> dict[str, str]:
    """Job id -> status for these ids (a psycopg2 connection)."""
    with db.cursor() as cur:
        cur.execute("SELECT id::text, status FROM jobs WHERE id::text = ANY(%s)", (ids,))
        return dict(cur.fetchall())


def run_echo_job(api: Any, db: Any, timeout: float = 30) -> str:
    """Submit an echo job and wait until it succeeded; its id."""
    job_id: str = api.post("/jobs", json={"task": "echo"}).json()["id"]
    wait_for(
        lambda: job_statuses(db, [job_id]) == {job_id: "succeeded"},
        timeout=timeout,
        what=f"job {job_id} to succeed within {timeout} s",
    )
    return job_id


def delete_messages(client: Any, queue_url: str, limit: int | None = None) -> int:
    """Receive and delete visible messages behind jobq's back (all, or up to `limit`); how
    many. SQS allows one PurgeQueue a minute; this works any time."""
    deleted = 0
    while limit is None or deleted < limit:
        want = 10 if limit is None else min(10, limit - deleted)
        reply = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=want)
        batch = reply.get("Messages", [])
        if not batch:
            break
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        client.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        deleted += len(batch)
    return deleted


def log_mentions(path: Path, text: str, *, after: int = 0) -> bool:
    """True if the log file at `path` holds `text` past byte `after`."""
    return path.exists() and text.encode() in path.read_bytes()[after:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[Any]:
    """`app` served by uvicorn on 127.0.0.1 in a thread of this process; yields the Server
    (its URL is `server_url(server)`)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, what="uvicorn to start")
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 in a thread of this process; yields its URL."""
    with serve_in_thread(app) as server:
        yield server_url(server)


def server_url(server: Any) -> str:
    """The http:// URL of a Server from serve_in_thread."""
    return f"http://127.0.0.1:{server.config.port}"


@contextlib.contextmanager
def api_process(settings: Settings, log_path: Path, **extra: str) -> Iterator[tuple[str, Any]]:
    """`jobq api` in its own process (its own process group) until the block ends; yields its
    URL and the Popen, once /healthz answers."""
    import httpx

    port = free_port()
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api"],
        env=settings_env(settings, HOST="127.0.0.1", PORT=str(port), **extra),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # cleanup reaches any process it starts
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, Path(log_path).read_text()[-3000:]
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, what="jobq api to answer")
        yield url, proc
    finally:
        stop_process(proc, group=True)
        log.close()
