"""`jobq submit|status|list|stats`: the API from a shell (JOBQ_API_URL), human or --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from app.config import Settings
from app.errors import JobqError

FINAL = {"succeeded", "failed", "cancelled"}


class ApiError(JobqError):
    """The API answered with an error body."""


def _call(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    url = settings.api_url.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if settings.api_key:
        req.add_header("authorization", f"Bearer {settings.api_key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - configured URL
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())["error"]
            message = f"{exc.code} {err['code']}: {err['message']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise ApiError(message) from exc
    except urllib.error.URLError as exc:
        raise ApiError(f"cannot reach the API at {settings.api_url}: {exc.reason}") from exc


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Arguments of each client command."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    if name == "submit":
        parser.add_argument("task")
        parser.add_argument("--payload", default="{}", help="JSON object")
        parser.add_argument("--priority", choices=["high", "default", "low"])
        parser.add_argument("--delay", type=int, dest="delay_seconds", help="seconds")
        parser.add_argument("--idempotency-key")
        parser.add_argument("--wait", action="store_true", help="wait for a final status")
        parser.add_argument("--timeout", type=float, default=3600, help="--wait limit (s)")
    elif name == "status":
        parser.add_argument("id")
    elif name == "list":
        parser.add_argument("--status")
        parser.add_argument("--task")
        parser.add_argument("--limit", type=int, default=20)


def _line(job: dict[str, Any]) -> str:
    extra = job.get("error") if job["status"] == "failed" else job.get("result")
    tail = (
        "" if extra is None else f"  {json.dumps(extra) if not isinstance(extra, str) else extra}"
    )
    return (
        f"{job['id']}  {job['task']:<16} {job['status']:<10} "
        f"attempts {job['attempts']}/{job['max_attempts']}{tail}"
    )


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data) if args.json else human)


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one client command; exit 1 when a waited-for job did not succeed."""
    if args.command == "submit":
        return _submit(settings, args)
    if args.command == "status":
        job = _call(settings, "GET", f"/jobs/{urllib.parse.quote(args.id)}")
        _emit(args, job, _line(job))
        return 0
    if args.command == "list":
        query = {k: v for k in ("status", "task", "limit") if (v := getattr(args, k)) is not None}
        page = _call(settings, "GET", "/jobs?" + urllib.parse.urlencode(query))
        _emit(args, page, "\n".join(_line(j) for j in page["items"]) or "no jobs")
        return 0
    stats = _call(settings, "GET", "/stats")
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


def _submit(settings: Settings, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise ApiError(f"--payload is not JSON: {exc}") from exc
    body: dict[str, Any] = {"task": args.task, "payload": payload}
    for key in ("priority", "delay_seconds", "idempotency_key"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    job = _call(settings, "POST", "/jobs", body)
    if not args.wait:
        _emit(args, job, _line(job))
        return 0
    deadline = time.monotonic() + args.timeout
    last = ""
    while job["status"] not in FINAL:
        if time.monotonic() > deadline:
            raise ApiError(f"job {job['id']} still {job['status']} after {args.timeout:g} s")
        if job["status"] != last:  # progress on stderr keeps stdout clean for --json
            print(f"{job['id']}: {job['status']} (attempt {job['attempts']})", file=sys.stderr)
            last = job["status"]
        time.sleep(0.2)  # polling interval of a client waiting on a remote job
        job = _call(settings, "GET", f"/jobs/{job['id']}")
    _emit(args, job, _line(job))
    return 0 if job["status"] == "succeeded" else 1
