"""`jobq dlq list|redrive`: inspect and replay failed jobs from the command line."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from pydantic import ValidationError

from app.config import Settings
from app.errors import InvalidInput
from app.jobs.schemas import JobOut, RedriveRequest
from app.jobs.service import JobService
from app.jobs.states import JobStatus
from app.publisher import Publisher
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
    """List failed jobs, or re-enqueue them (the same as POST /dlq/redrive)."""
    runtime = build_runtime(settings, pool_size=2)
    publisher = Publisher(runtime.sqs, runtime.sessions)
    service = JobService(runtime.sessions, runtime.registry, publisher, settings)
    publisher.start()
    try:
        request = _request(args)
        if args.action == "redrive":
            jobs = service.redrive(request)
            if args.json:
                print(json.dumps({"redriven": len(jobs), "job_ids": [str(j.id) for j in jobs]}))
            else:
                print(f"redriven {len(jobs)} failed job(s)")
            return 0
        items, _ = service.find(status=JobStatus.FAILED, task=args.task, limit=min(args.limit, 500))
        rows = [JobOut.model_validate(j) for j in items]
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in rows]))
        for r in [] if args.json else rows:
            dlq = "dlq" if r.dead_lettered_at else "   "
            print(f"{r.id}  {r.task:<20} {dlq} {r.finished_at:%Y-%m-%d %H:%M:%S}  {r.error}")
        return 0
    finally:
        publisher.stop()  # flushes the re-enqueued jobs' messages
        runtime.close()


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
