"""`jobq dev`: the whole stack on one machine, no Docker, no AWS account.

Also the embedded PostgreSQL (pgserver) and in-process SQS server (moto) the tests use.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import masked_url
from app.errors import JobqError
from app.migrate import upgrade
from app.sqs.queue import ensure_queues, make_sqs_client
from jobq._core import DEFAULT_URL as DEFAULT_API_URL

DEV_DLQ = "jobq-dlq"
# The crash-loop guard, as in infra/jobq.yaml; attempts are counted by jobq, not by SQS.
DEV_MAX_RECEIVE_COUNT = 5


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) an embedded PostgreSQL under data_dir; return its URL and handle."""
    import pgserver  # local extra: not installed in production images

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return server.get_uri(), server


@dataclass
class SqsServer:
    """moto's SQS-compatible server on 127.0.0.1, started in this process."""

    port: int = 0
    _server: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The http:// endpoint clients should use."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SqsServer:
        """Start serving; port 0 picks a free port."""
        from moto.server import ThreadedMotoServer

        if self.port and not port_is_free(self.port):
            # moto's server would wait forever for a port it cannot bind.
            raise JobqError(f"port {self.port} is in use; set JOBQ_DEV_SQS_PORT to another port")
        # moto validates credentials loosely but boto3 insists on having some.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server._server.server_port  # the real port when 0 was asked
        return self

    def stop(self) -> None:
        """Stop serving (moto keeps queue state in-process, so a restart keeps the queues)."""
        if self._server is not None:
            self._server.stop()
            self._server = None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pasteable_url(url: str) -> str:
    """The database URL to show: as is when it has no password (pgserver's has an empty one,
    which masking would turn into a `***` nobody can paste), else with the password masked."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL must still never leak
        return masked_url(url)
    return masked_url(url) if parsed.password else url


def http_url(host: str, port: int) -> str:
    """The http:// address a client on this machine uses for a server bound to host:port."""
    if host in ("", "0.0.0.0", "::"):  # bound to every address: loopback reaches it
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# What `jobq dev` may set for its children that the CLI in another shell needs as well: the
# database (`jobq keys`, `jobq dlq`), the queues and their credentials (`jobq dlq redrive`).
CLI_VARIABLES = (
    "DATABASE_URL",
    "SQS_ENDPOINT_URL",
    "SQS_QUEUE_URL",
    "SQS_HIGH_QUEUE_URL",
    "SQS_LOW_QUEUE_URL",
    "SQS_DLQ_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def cli_exports(env: dict[str, str], settings: Settings, inherited: dict[str, str]) -> list[str]:
    """Shell lines that point `jobq dlq|keys|submit|...` in another terminal at this stack:
    what `jobq dev` set itself (not what it `inherited` from the user's environment)."""
    lines = []
    for name in CLI_VARIABLES:
        value = env.get(name)
        if not value or inherited.get(name) == value:
            continue
        if name == "DATABASE_URL" and pasteable_url(value) != value:
            continue  # never print a password
        lines.append(f"export {name}={shlex.quote(value)}")
    api = http_url(settings.host, settings.port)
    if api != DEFAULT_API_URL:  # the CLI and jobq.Client default to it
        lines.append(f"export JOBQ_API_URL={shlex.quote(api)}")
    return lines


def banner(
    env: dict[str, str], settings: Settings, embedded: list[str], inherited: dict[str, str]
) -> str:
    """What `jobq dev` prints once the API answers (`inherited`: the user's environment)."""
    api = http_url(settings.host, settings.port)
    metrics = (
        http_url(settings.host, settings.metrics_port) + "/metrics"
        if settings.metrics_port
        else "off (JOBQ_METRICS_PORT=0)"
    )
    lines = [
        "",
        "jobq dev is running (Ctrl-C stops everything; a second Ctrl-C at once)",
        f"  API        {api}",
        f"  dashboard  {api}/dashboard",
        f"  API docs   {api}/docs",
        f"  readiness  {api}/readyz",
        f"  metrics    {api}/metrics (API), {metrics} (worker)",
        f"  database   {pasteable_url(env['DATABASE_URL'])}",
        f"  SQS        {env.get('SQS_ENDPOINT_URL') or 'AWS'}  queue {env['SQS_QUEUE_URL']}",
        f"  embedded   {', '.join(embedded) or 'nothing (using the configured services)'}",
        "  auth       "
        + (
            "OFF (JOBQ_AUTH=disabled): anyone who can reach the port may submit jobs"
            if env.get("JOBQ_AUTH") == "disabled"
            else "API keys required (JOBQ_API_KEYS / jobq keys)"
        ),
    ]
    if any("moto" in part for part in embedded):
        # moto's server, not jobq, is what a newcomer's first load test measures.
        lines.append(
            "  speed      moto's SQS server bounds this stack (~20 jobs/s);"
            " for a load test: make dev-fauxqs (docs/benchmarks.md)"
        )
    exports = cli_exports(env, settings, inherited)
    if exports:
        lines.append("  CLI        in another shell, for jobq dlq, jobq keys, jobq submit, ...:")
        lines.extend(f"               {line}" for line in exports)
    lines += [
        f"  try:       curl -s -XPOST {api}/jobs -H 'content-type: application/json' "
        '-d \'{"task":"echo","payload":{"hi":1}}\'',
        "",
    ]
    return "\n".join(lines)


def _prepare(
    settings: Settings, data_dir: Path, handles: list[Any]
) -> tuple[dict[str, str], list[str]]:
    """Start what is not configured (appending to `handles`); return env and a summary."""
    env = dict(os.environ)
    embedded: list[str] = []
    if not settings.database_url:
        url, pg = start_postgres(data_dir / "pg")
        handles.append(pg)
        embedded.append(f"PostgreSQL (pgserver, data in {data_dir / 'pg'})")
        env["DATABASE_URL"] = url
    if not settings.sqs_queue_url:
        port = int(os.environ.get("JOBQ_DEV_SQS_PORT", "9324"))
        server = SqsServer(port=port).start()
        handles.append(server)
        embedded.append(f"SQS (moto server on 127.0.0.1:{server.port})")
        env.update(
            SQS_ENDPOINT_URL=server.endpoint,
            AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        )
        client = make_sqs_client(settings.model_copy(update={"sqs_endpoint_url": server.endpoint}))
        urls: dict[str, str] = {}
        for priority in ("high", "default", "low"):
            urls[priority], dlq = ensure_queues(
                client,
                f"jobq-{priority}",
                DEV_DLQ,
                max_receive_count=DEV_MAX_RECEIVE_COUNT,
                visibility_timeout=settings.visibility_timeout_seconds,
            )
        env.update(
            SQS_QUEUE_URL=urls["default"],
            SQS_HIGH_QUEUE_URL=urls["high"],
            SQS_LOW_QUEUE_URL=urls["low"],
            SQS_DLQ_URL=dlq,
        )
    env.setdefault("JOBQ_LOG_FORMAT", "console")
    # JOBQ_TASK_MODULES=mytasks jobq dev: modules in the directory it runs from just work.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    # Local development: no API keys unless asked for (the banner says so).
    if not env.get("JOBQ_API_KEYS"):
        env.setdefault("JOBQ_AUTH", "disabled")
    # Shorter long polls make Ctrl-C quick: the worker waits for its last poll to return.
    env.setdefault("JOBQ_SQS_WAIT_SECONDS", "5")
    return env, embedded


def _stop(handles: list[Any]) -> None:
    for handle in reversed(handles):
        try:
            if isinstance(handle, SqsServer):
                handle.stop()
            else:
                handle.cleanup()
        except Exception as exc:  # noqa: BLE001 - best effort at shutdown
            print(f"jobq dev: stopping {handle!r} failed: {exc}", file=sys.stderr)


class StopRequests:
    """Ctrl-C (or SIGTERM) handling: the first asks for a graceful stop, the second forces it."""

    def __init__(self, grace_seconds: float) -> None:
        self.stop = threading.Event()
        self.force = threading.Event()
        self.grace_seconds = grace_seconds

    def __call__(self, *_: object) -> None:
        """The signal handler."""
        if self.stop.is_set():
            self.force.set()
            print("jobq dev: forcing the stop", file=sys.stderr, flush=True)
            return
        self.stop.set()
        print(
            f"jobq dev: stopping (running jobs get up to {self.grace_seconds:g} s; "
            "Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


def reap(
    children: list[subprocess.Popen[bytes]], grace_seconds: float, force: threading.Event
) -> None:
    """SIGTERM the children, wait out their grace, and SIGKILL whoever is left then, or as soon
    as `force` is set."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while any(c.poll() is None for c in children):
        if force.wait(0.1) or time.monotonic() > deadline:
            break
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def _api_answers(
    api: str, children: list[subprocess.Popen[bytes]], stop: threading.Event, timeout: float = 120
) -> bool:
    """Wait until the API answers /healthz, so the banner's addresses work when it shows; False
    if a child died, a stop was asked for or the API never came up."""
    import httpx

    deadline = time.monotonic() + timeout
    while not stop.wait(0.2):
        if any(c.poll() is not None for c in children):
            print("jobq dev: a child exited while starting; stopping", file=sys.stderr)
            return False
        try:
            if httpx.get(f"{api}/healthz", timeout=2, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            print(f"jobq dev: the API did not answer on {api} in {timeout:g} s", file=sys.stderr)
            return False
    return False


def run_dev(settings: Settings) -> int:
    """Run until Ctrl-C; return non-zero if a child process died on its own."""
    data_dir = Path(os.environ.get("JOBQ_DEV_DIR", ".jobq")).resolve()
    inherited = dict(os.environ)  # before the SQS server sets its stand-in credentials
    requests = StopRequests(settings.shutdown_grace_seconds)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, requests)
    children: list[subprocess.Popen[bytes]] = []
    handles: list[Any] = []
    try:
        env, embedded = _prepare(settings, data_dir, handles)
        upgrade(env["DATABASE_URL"])
        for command in ("api", "worker"):
            children.append(subprocess.Popen([sys.executable, "-m", "app.cli", command], env=env))
        if not _api_answers(http_url(settings.host, settings.port), children, requests.stop):
            return 0 if requests.stop.is_set() else 1
        print(banner(env, settings, embedded, inherited), flush=True)
        while not requests.stop.wait(0.5):
            dead = [c for c in children if c.poll() is not None]
            if dead:
                print(
                    f"jobq dev: a child exited with {dead[0].returncode}; stopping", file=sys.stderr
                )
                return 1
        return 0
    finally:
        # The children's own grace, plus time to start up and stop their loops.
        reap(children, settings.shutdown_grace_seconds + 5, requests.force)
        _stop(handles)
        print("jobq dev: stopped", flush=True)
