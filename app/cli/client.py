"""`jobq submit|status|list|stats|schedules|workflow`: the API from a shell (JOBQ_API_URL),
human or --json.

Every command goes through the SDK (jobq.Client): typed errors, retries with backoff, and
`submit --wait` long-polls instead of polling.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import jobq
from app.config import Settings
from app.errors import JobqError
from jobq.client import UNSET

# A shell user would rather hear that the API is down after a few seconds than after half a
# minute of backoff.
CLI_RETRIES = 3


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of each client command."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    if name == "submit":
        parser.add_argument("task")
        parser.add_argument("--payload", default="{}", help="JSON object")
        parser.add_argument("--priority", choices=["high", "default", "low"])
        parser.add_argument("--queue", help="named queue (JOBQ_QUEUE_URLS)")
        parser.add_argument("--callback-url", help="POSTed the job's JSON, signed, when final")
        parser.add_argument("--delay", type=int, dest="delay_seconds", help="seconds")
        parser.add_argument("--idempotency-key")
        parser.add_argument("--unique-key", help="one unfinished job per key")
        parser.add_argument(
            "--depends-on", action="append", help="a parent job id (repeat for several)"
        )
        parser.add_argument("--wait", action="store_true", help="wait for a final status")
        parser.add_argument("--timeout", type=float, default=3600, help="--wait limit (s)")
    elif name == "status":
        parser.add_argument("id")
    elif name == "schedules":
        parser.add_argument(
            "action", choices=["list", "show", "create", "enable", "disable", "run", "delete"]
        )
        parser.add_argument("name", nargs="?")
        parser.add_argument("task", nargs="?")
        parser.add_argument("--cron")
        parser.add_argument("--every", type=int, dest="interval_seconds", help="seconds")
        parser.add_argument("--tz", default="UTC", help="IANA time zone")
        parser.add_argument("--payload", default="{}", help="JSON object")
    elif name == "workflow":
        parser.add_argument("id")
        parser.add_argument("--cancel", action="store_true", help="cancel its unfinished jobs")
    elif name in ("pause", "resume"):
        parser.add_argument("scope", choices=["task", "queue"])
        parser.add_argument("name")
    elif name == "limits":
        parser.add_argument("task")
        parser.add_argument("--max-concurrency", help="a number, or 'none' to clear")
        parser.add_argument("--rate-limit", help="e.g. 100/minute, or 'none' to clear")
    elif name == "list":
        parser.add_argument("--status")
        parser.add_argument("--task")
        parser.add_argument("--limit", type=int, default=20)


def _line(job: jobq.Job) -> str:
    extra = job.error if job.status == jobq.JobStatus.FAILED else job.result
    tail = "" if extra is None else f"  {extra if isinstance(extra, str) else json.dumps(extra)}"
    return (
        f"{job.id}  {job.task:<16} {job.status:<10} "
        f"attempts {job.attempts}/{job.max_attempts}{tail}"
    )


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data) if args.json else human)


def _data(job: jobq.Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one client command; exit 1 when a waited-for job did not succeed."""
    client = jobq.Client(settings.api_url, settings.api_key or None, max_retries=CLI_RETRIES)
    try:
        with client:
            return _run(client, args)
    except jobq.ApiError as exc:
        raise JobqError(str(exc)) from exc


def _run(client: jobq.Client, args: argparse.Namespace) -> int:
    if args.command == "submit":
        return _submit(client, args)
    if args.command == "status":
        job = client.get(args.id)
        _emit(args, _data(job), _line(job))
        return 0
    if args.command == "schedules":
        return _schedules(client, args)
    if args.command == "workflow":
        flow = client.cancel_workflow(args.id) if args.cancel else client.workflow(args.id)
        human = "\n".join([f"workflow {flow.id}: {flow.status}", *map(_line, flow.jobs)])
        _emit(args, flow.model_dump(mode="json"), human)
        return 0
    if args.command == "list":
        filters = {k: v for k in ("status", "task") if (v := getattr(args, k)) is not None}
        page = list(itertools.islice(client.list(page_size=args.limit, **filters), args.limit))
        _emit(args, {"items": [_data(j) for j in page]}, "\n".join(map(_line, page)) or "no jobs")
        return 0
    if args.command in ("pause", "resume", "limits", "controls"):
        return _flow(client, args)
    stats = client.stats()
    depth = {name: (d or {}).get("visible") for name, d in stats["queues"].items()}
    human = "\n".join(
        [
            "jobs:    " + ", ".join(f"{k} {v}" for k, v in sorted(stats["by_status"].items())),
            f"queues:  {depth}  dlq: {(stats['dlq'] or {}).get('visible')}",
            f"done:    {stats['throughput']['per_minute']}/min over "
            f"{stats['throughput']['window_minutes']} min",
            *[f"failed:  {f['id']} {f['task']}: {f['error']}" for f in stats["recent_failures"]],
        ]
    )
    _emit(args, stats, human)
    return 0


def _payload(text: str) -> dict[str, Any]:
    """--payload as a JSON object, or a JobqError saying what is wrong with it."""
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise JobqError(f"--payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise JobqError("--payload must be a JSON object")
    return payload


def _submit(client: jobq.Client, args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    options = {
        k: v
        for k in (
            "priority",
            "delay_seconds",
            "idempotency_key",
            "unique_key",
            "depends_on",
            "queue",
            "callback_url",
        )
        if (v := getattr(args, k)) is not None
    }
    job = client.submit(args.task, payload, **options)
    if args.wait and not job.final:
        # Progress on stderr keeps stdout clean for --json.
        print(f"{job.id}: {job.status} (attempt {job.attempts}); waiting", file=sys.stderr)
        job = client.wait(job, timeout=args.timeout)
    _emit(args, _data(job), _line(job))
    return 0 if not args.wait or job.status == jobq.JobStatus.SUCCEEDED else 1


def _schedule_line(s: jobq.CronSchedule) -> str:
    rule = s.cron if s.cron is not None else f"every {s.interval_seconds} s"
    state = "enabled" if s.enabled else "disabled"
    return (
        f"{s.name:<24} {s.task:<16} {rule} ({s.timezone}) {state}  "
        f"next {s.next_run_at and s.next_run_at.isoformat()}  "
        f"last {s.last_run_at and s.last_run_at.isoformat()}"
    )


def _schedules(client: jobq.Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        items = client.schedules()
        data = {"items": [s.model_dump(mode="json") for s in items]}
        _emit(args, data, "\n".join(map(_schedule_line, items)) or "no schedules")
        return 0
    if not args.name:
        raise JobqError(f"schedules {args.action} needs a NAME")
    if args.action == "run":
        job_id = client.run_schedule(args.name)
        _emit(args, {"job_id": str(job_id)}, str(job_id))
        return 0
    if args.action == "delete":
        client.delete_schedule(args.name)
        _emit(args, {"deleted": args.name}, f"deleted {args.name}")
        return 0
    if args.action == "create":
        if not args.task:
            raise JobqError("schedules create needs NAME and TASK")
        rule = {"cron": args.cron} if args.cron else {"interval_seconds": args.interval_seconds}
        payload = _payload(args.payload)
        schedule = client.create_schedule(
            args.name, args.task, payload=payload, timezone=args.tz, **rule
        )
    elif args.action in ("enable", "disable"):
        schedule = client.update_schedule(args.name, enabled=args.action == "enable")
    else:
        schedule = client.schedule(args.name)
    _emit(args, schedule.model_dump(mode="json"), _schedule_line(schedule))
    return 0


def _control_line(c: jobq.Control) -> str:
    state = "paused" if c.paused else "running"
    conc = c.effective_max_concurrency or "-"
    rate = c.effective_rate_limit or "-"
    busy = "" if c.running is None else f"  running now {c.running}"
    return f"{c.scope:<5} {c.name:<20} {state:<8} max_concurrency {conc}  rate {rate}{busy}"


def _limit_value(text: str | None, number: bool) -> Any:
    if text is None:
        return UNSET
    if text.lower() == "none":
        return None
    if not number:
        return text
    try:
        return int(text)
    except ValueError:
        raise JobqError(f"--max-concurrency must be a whole number or 'none': {text!r}") from None


def _flow(client: jobq.Client, args: argparse.Namespace) -> int:
    """pause/resume task|queue NAME, limits TASK [...], controls."""
    if args.command == "controls":
        found = client.list_controls()
        human = "\n".join(map(_control_line, found)) or "nothing paused or limited"
        _emit(args, {"controls": [c.model_dump(mode="json") for c in found]}, human)
        return 0
    if args.command in ("pause", "resume"):
        where = {args.scope: args.name}
        c = client.pause(**where) if args.command == "pause" else client.resume(**where)
    elif args.max_concurrency is None and args.rate_limit is None:
        c = client.controls(task=args.task)
    else:
        c = client.set_limits(
            args.task,
            max_concurrency=_limit_value(args.max_concurrency, True),
            rate_limit=_limit_value(args.rate_limit, False),
        )
    _emit(args, c.model_dump(mode="json"), _control_line(c))
    return 0
