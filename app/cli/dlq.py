"""`jobq dlq list|redrive`: inspect and replay failed jobs from the command line."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from pydantic import ValidationError

from app.catalogue.wiring import build_catalogue
from app.config import Settings
from app.db import make_engine, make_session_factory, translate_db_errors
from app.errors import InvalidInput
from app.jobs import queries
from app.jobs.schemas import JobOut, RedriveRequest
from app.jobs.service import JobService
from app.outbox.publisher import Publisher
from app.runtime import build_runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`dlq ACTION [filters]`."""
    parser.add_argument("action", choices=["list", "redrive"])
    parser.add_argument("--task", help="only jobs of this task")
    parser.add_argument("--since", help="failed at or after (ISO 8601 with timezone)")
    parser.add_argument("--until", help="failed before (ISO 8601 with timezone)")
    parser.add_argument("--dead-lettered-only", action="store_true", help="only DLQ arrivals")
    parser.add_argument("--limit", type=int, default=100, help="how many at most")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """List failed jobs (PostgreSQL only), or re-enqueue them (like POST /dlq/redrive)."""
    request = _request(args)
    if args.action == "list":
        return _list(settings, request, as_json=args.json)
    runtime = build_runtime(settings, pool_size=2, load_tasks=False)
    publisher = Publisher(runtime.sqs, runtime.sessions)
    service = JobService(
        runtime.sessions, build_catalogue(runtime.sessions, settings), publisher, settings
    )
    publisher.start()
    try:
        jobs = service.redrive(request)
    finally:
        publisher.stop()  # flushes the re-enqueued jobs' messages
        runtime.close()
    if args.json:
        print(json.dumps({"redriven": len(jobs), "job_ids": [str(j.id) for j in jobs]}))
    else:
        print(f"redriven {len(jobs)} failed job(s)")
    return 0


def _list(settings: Settings, request: RedriveRequest, *, as_json: bool) -> int:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        with translate_db_errors(), make_session_factory(engine)() as session:
            found = queries.failed_jobs(
                session,
                task=request.task,
                failed_after=request.failed_after,
                failed_before=request.failed_before,
                dead_lettered_only=request.dead_lettered_only,
                limit=min(request.limit, 500),
            )
            rows = [JobOut.model_validate(j) for j in found]
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in rows]))
        return 0
    for r in rows:
        dlq = "dlq" if r.dead_lettered_at else "   "
        when = f"{r.finished_at:%Y-%m-%d %H:%M:%S}" if r.finished_at else "-"
        print(f"{r.id}  {r.task:<20} {dlq} {when}  {r.error}")
    return 0


def _request(args: argparse.Namespace) -> RedriveRequest:
    try:
        return RedriveRequest(
            task=args.task,
            failed_after=_when(args.since, "--since"),
            failed_before=_when(args.until, "--until"),
            dead_lettered_only=args.dead_lettered_only,
            limit=args.limit,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(
            f"{first['loc'][0]}: {first['msg']}", field=str(first["loc"][0])
        ) from exc


def _when(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{flag}: not an ISO 8601 timestamp", field=flag) from exc
    if when.tzinfo is None:
        raise InvalidInput(f"{flag}: give a timezone, e.g. 2026-01-01T00:00:00Z", field=flag)
    return when
