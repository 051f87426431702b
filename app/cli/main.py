"""The `jobq` command: api, worker, migrate, dispatcher, dlq-consumer, dev."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from app.config import Settings, get_settings
from app.db import masked_url
from app.errors import JobqError
from app.loops import BackgroundLoop
from app.observability import emf
from app.observability.logs import configure_logging

log = logging.getLogger("jobq.cli")


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the HTTP API with uvicorn (several processes with --workers / JOBQ_API_WORKERS)."""
    import uvicorn

    from app.api.app import create_app
    from app.api.server import GuardedHttpToolsProtocol, raise_open_files_limit, uvicorn_options

    # No JOBQ_TASK_MODULES here: the API validates against the catalogue workers publish.
    workers = args.workers or settings.api_workers
    # Inherited by the worker processes uvicorn starts.
    open_files = raise_open_files_limit()
    limits = GuardedHttpToolsProtocol.configure(settings)
    log.info(
        "serving with at most %d connections per process (open files %d), headers within %g s",
        limits.max_connections,
        open_files,
        limits.header_timeout,
    )
    # With several processes each builds its own app from the environment (its own pool,
    # publisher and dispatcher); uvicorn's supervisor restarts a worker that dies.
    target: Any = create_app(settings, tune_gc=True) if workers == 1 else "app.api.app:serving_app"
    with shared_metrics_dir(workers):
        uvicorn.run(target, factory=workers > 1, workers=workers, **uvicorn_options(settings))
    return 0


@contextlib.contextmanager
def shared_metrics_dir(processes: int) -> Iterator[None]:
    """Several API processes share one port, so a scrape reaches any one of them: give them a
    PROMETHEUS_MULTIPROC_DIR (unless one is set) so /metrics adds up all of them."""
    if processes == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="jobq-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by the processes uvicorn starts
    try:
        yield
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(path, ignore_errors=True)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Consume jobs until SIGTERM/SIGINT."""
    from app.runtime import build_runtime
    from worker.runner import Worker

    # Handlers do not use our pool: the consumer, completer, heartbeat, DLQ consumer and
    # duplicate-message checks do, a few at a time, and the after-commit SQS thread
    # (worker/after_commit.py) holds one when it marks sends published. Each poller claims on a
    # connection of its own, so there is one per poller on top.
    pool = min(settings.worker_concurrency, 4) + 3 + settings.effective_pollers
    runtime = build_runtime(settings, pool_size=pool)
    from app.observability import otel

    otel.configure()
    if settings.metrics_port:
        from app.observability.metrics import serve_worker_metrics

        serve_worker_metrics(settings.metrics_port, settings.host)
        log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    try:
        return Worker(runtime).run_until_signalled()
    finally:
        runtime.close()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Apply database migrations up to head."""
    from app.db import translate_db_errors
    from app.migrate import upgrade

    with translate_db_errors():
        upgrade(settings.database_url, args.revision)
    log.info("database migrated to %s: %s", args.revision, masked_url(settings.database_url))
    return 0


def _run_loop(loops: Sequence[BackgroundLoop]) -> int:
    """Run background loops until SIGTERM/SIGINT, then stop them."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    for loop in loops:
        loop.start()
    while not done.wait(1.0):
        pass
    for loop in loops:
        loop.stop()
    return 0


def cmd_dispatcher(settings: Settings, args: argparse.Namespace) -> int:
    """Only the dispatcher, retention, the schedule ticker and the reconciler (the API also
    runs them in-process)."""
    from app.maintenance.reconciler import build_reconciler
    from app.maintenance.retention import Retention
    from app.outbox.dispatcher import build_dispatcher
    from app.runtime import build_runtime
    from app.schedules.ticker import build_ticker

    runtime = build_runtime(settings, pool_size=2, load_tasks=False)
    loops: list[BackgroundLoop] = [
        build_dispatcher(runtime, settings),
        Retention(runtime.sessions, retention_days=settings.retention_days),
        build_ticker(runtime, settings),
    ]
    if (reconciler := build_reconciler(runtime, settings)) is not None:
        loops.append(reconciler)
    return _run_loop(loops)


def cmd_dlq_consumer(settings: Settings, args: argparse.Namespace) -> int:
    """Only settle dead-lettered messages (workers also do this unless JOBQ_DLQ_CONSUMER=false)."""
    from app.runtime import build_runtime
    from worker.dlq import DeadLetterConsumer

    runtime = build_runtime(settings, pool_size=2)
    dlq_url = runtime.sqs.resolve_dlq_url()
    if not dlq_url:
        raise JobqError(
            "no dead-letter queue: set SQS_DLQ_URL or a RedrivePolicy", field="SQS_DLQ_URL"
        )
    consumer = DeadLetterConsumer(
        runtime.sqs, runtime.sessions, dlq_url, wait_seconds=settings.sqs_wait_seconds
    )
    return _run_loop([consumer])


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    """List or redrive failed jobs."""
    from app.cli import dlq as cli_dlq

    return cli_dlq.run(settings, args)


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    """Manage API keys."""
    from app.cli import keys as cli_keys

    return cli_keys.run(settings, args)


def cmd_client(settings: Settings, args: argparse.Namespace) -> int:
    """Talk to a running API."""
    from app.cli import client as cli_client

    return cli_client.run(settings, args)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Embedded PostgreSQL + SQS emulator + migrations + API + one worker."""
    from app.cli.dev import run_dev

    return run_dev(settings)


COMMANDS: dict[str, tuple[Callable[[Settings, argparse.Namespace], int], str]] = {
    "api": (cmd_api, "serve the HTTP API (HOST, PORT)"),
    "worker": (cmd_worker, "run a worker until SIGTERM"),
    "migrate": (cmd_migrate, "apply database migrations"),
    "dispatcher": (
        cmd_dispatcher,
        "re-publish unconfirmed jobs, re-send lost ones, prune old ones",
    ),
    "dlq-consumer": (cmd_dlq_consumer, "mark dead-lettered jobs failed and drain the DLQ"),
    "dlq": (cmd_dlq, "list failed jobs or redrive them: dlq list|redrive [--task ...]"),
    "dev": (cmd_dev, "run everything locally on embedded PostgreSQL and SQS"),
    "keys": (cmd_keys, "API keys: keys create NAME [--scope read|submit] | list | revoke NAME"),
    "submit": (cmd_client, "submit a job through the API: submit TASK --payload JSON [--wait]"),
    "status": (cmd_client, "show one job: status ID"),
    "list": (cmd_client, "list jobs: list [--status S] [--task T] [--limit N]"),
    "stats": (cmd_client, "counts, queue depths, throughput and recent failures"),
    "schedules": (
        cmd_client,
        "cron schedules: schedules list | show NAME | create NAME TASK --cron EXPR "
        "| enable NAME | disable NAME | run NAME | delete NAME",
    ),
    "workflow": (cmd_client, "show a workflow's jobs and status: workflow ID [--cancel]"),
    "pause": (cmd_client, "pause a task or queue: pause task|queue NAME"),
    "resume": (cmd_client, "resume a task or queue: resume task|queue NAME"),
    "limits": (
        cmd_client,
        "show or set a task's limits: limits TASK [--max-concurrency N] [--rate-limit 100/minute]",
    ),
    "controls": (cmd_client, "list paused and limited tasks and queues"),
}


# The long-running commands whose metrics reach CloudWatch (JOBQ_EMF_INTERVAL_SECONDS).
SERVICES = frozenset({"api", "worker", "dispatcher", "dlq-consumer"})


def _process_count(text: str) -> int:
    """argparse type for --workers: a whole number from 1 to 64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers must be a whole number: {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"--workers must be between 1 and 64, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; one subcommand per entry in COMMANDS."""
    parser = argparse.ArgumentParser(prog="jobq", description="jobq: jobs on PostgreSQL + SQS")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (handler, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "migrate":
            p.add_argument("revision", nargs="?", default="head")
        elif name == "api":
            p.add_argument(
                "--workers",
                type=_process_count,
                default=0,
                help="API processes (default JOBQ_API_WORKERS, 1): each uses one core at most",
            )
        elif name == "dlq":
            from app.cli import dlq as cli_dlq

            cli_dlq.add_arguments(p)
        elif name == "keys":
            from app.cli import keys as cli_keys

            cli_keys.add_arguments(p)
        elif handler is cmd_client:
            from app.cli import client as cli_client

            cli_client.add_arguments(name, p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jobq` console script."""
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # pydantic's ValidationError names the bad variable
        print(f"jobq: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "dev" and "JOBQ_LOG_FORMAT" not in os.environ:
        settings = settings.model_copy(update={"log_format": "console"})
    quiet = (
        *("dlq", "keys", "submit", "status", "list", "stats", "schedules", "workflow"),
        *("pause", "resume", "limits", "controls"),
    )
    if args.command in quiet and ("JOBQ_LOG_LEVEL" not in os.environ):
        settings = settings.model_copy(update={"log_level": "WARNING"})  # keep stdout for output
    configure_logging(settings)
    handler, _ = COMMANDS[args.command]
    try:
        with emf.exporting(settings, args.command if args.command in SERVICES else None):
            return handler(settings, args)
    except JobqError as exc:
        print(f"jobq {args.command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
