"""The operations pages: queues, workers, the dead-letter queue, scheduled jobs and charts."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.dashboard import svg
from app.api.dashboard.common import PAGE_SIZE, jobs, page
from app.api.dashboard.search import search_page
from app.db import translate_db_errors
from app.jobs import controls, workers
from app.jobs.filters import PRIORITIES, JobFilter
from app.jobs.states import JobStatus
from app.observability import charts
from app.observability.stats import queue_name, unfinished_by_route

router = APIRouter()


def _sessions(request: Request) -> Any:
    return request.app.state.runtime.sessions


_TTL = {"minute": 4.0, "hour": 60.0}  # seconds a chart's points are reused
_CACHE_LOCK = threading.Lock()


def _throughput(request: Request, unit: str) -> list[dict[str, Any]]:
    """Chart points, reused for _TTL[unit] s by this app (one per process): however many
    people watch the overview, the day's chart costs one scan of a day's attempts a minute
    (measured: 0.9 s for 200,000 attempts on the shared 2-core machine)."""
    state = request.app.state
    with _CACHE_LOCK:
        cache: dict[str, tuple[float, list[dict[str, Any]]]] = getattr(state, "charts", {})
        state.charts = cache
        hit = cache.get(unit)
    if hit is not None and time.monotonic() - hit[0] < _TTL[unit]:
        return hit[1]
    with translate_db_errors(), _sessions(request)() as session:
        points = charts.throughput(session, unit)
    with _CACHE_LOCK:
        cache[unit] = (time.monotonic(), points)
    return points


def throughput_charts(request: Request) -> dict[str, Any]:
    """The overview's two charts: attempts per minute (last hour) and per hour (last day)."""
    minutes = _throughput(request, "minute")
    hours = _throughput(request, "hour")
    return {
        "minute": svg.stacked_bars(minutes, label_format="%H:%M"),
        "hour": svg.stacked_bars(hours, label_format="%H:00"),
        "last_hour": {k: sum(p[k] for p in minutes) for k in ("ok", "failed", "other")},
    }


@router.get("/queues", response_class=HTMLResponse)
def queues(request: Request) -> HTMLResponse:
    """Per named queue and priority: SQS depth, in flight and delayed, what PostgreSQL holds
    for it, and whether it is paused; per task: pause and limits (flow control)."""
    sqs = request.app.state.runtime.sqs
    depths = request.app.state.sampler.depths()
    with translate_db_errors(), _sessions(request)() as session:
        held = unfinished_by_route(session)
        rows = controls.list_all(session)
    paused = {c.name for c in rows if c.scope == "queue" and c.paused}
    # The queues this process routes to, then any other a job or a pause names.
    names = list(sqs.queue_names())
    for name in sorted({q for q, _ in held} | {c.name for c in rows if c.scope == "queue"}):
        if name not in names:
            names.append(name)
    routes = []
    for name in names:
        for priority in PRIORITIES:
            routes.append(
                {
                    "name": name,
                    "priority": priority,
                    "sqs_name": queue_name(sqs.url_for(priority, name)),
                    "sqs": depths["queues"].get(queue_name(sqs.url_for(priority, name))),
                    "db": held.get((name, priority), {}),
                    "first": priority == PRIORITIES[0],
                    "paused": name in paused,
                }
            )
    return page(
        request,
        "queues.html",
        rows=routes,
        tasks=task_controls(request, rows),
        dlq=depths.get("dlq"),
        sampled_age=depths.get("queues_sampled_age_seconds"),
    )


def task_controls(request: Request, rows: list[controls.ControlOut]) -> list[Any]:
    """Every task the catalogue knows and every task with a control row, by name: pause,
    limits in effect (run-time or declared in code), running now."""
    known = {c.name: c for c in rows if c.scope == "task"}
    views = jobs(request).catalogue.views()
    for name in views:
        known.setdefault(name, controls.ControlOut(scope="task", name=name))
    out = []
    for name in sorted(known):
        view = views.get(name)
        queue = (view.newest.queue if view else None) or "default"
        out.append({"control": known[name], "queue": queue})
    return out


@router.get("/workers", response_class=HTMLResponse)
def worker_list(request: Request) -> HTMLResponse:
    """Every worker that heartbeat in the last day: live, stopped, or dead."""
    with translate_db_errors(), _sessions(request)() as session:
        rows = workers.list_workers(session)
    live = [w for w in rows if not w["dead"] and w["stopped_at"] is None]
    return page(
        request,
        "workers.html",
        workers=rows,
        live=len(live),
        slots=sum(w["concurrency"] for w in live),
        busy=sum(w["running"] for w in live),
    )


@router.get("/dlq", response_class=HTMLResponse)
def dead_letters(request: Request, cursor: str | None = None) -> HTMLResponse:
    """Dead-lettered jobs (the search, restricted to them), the DLQ's depth, redrive."""
    return search_page(
        request,
        "dlq.html",
        cursor=cursor,
        title="Dead letters",
        forced={"dead_lettered": "1"},
        dlq=request.app.state.sampler.depths().get("dlq"),
    )


@router.get("/scheduled", response_class=HTMLResponse)
def scheduled(request: Request, cursor: str | None = None) -> HTMLResponse:
    """Jobs waiting in PostgreSQL for their run_at (newest first), with run now and cancel."""
    search = JobFilter(status=JobStatus.SCHEDULED)
    items, next_cursor = jobs(request).search(search, limit=PAGE_SIZE, cursor=cursor or None)
    return page(
        request,
        "scheduled.html",
        jobs=items,
        next_url=search.query(cursor=next_cursor) if next_cursor else None,
    )


@router.get("/charts", response_class=HTMLResponse)
def chart_page(request: Request, hours: float = 1.0) -> HTMLResponse:
    """Throughput and failures over time; run time and queue wait p50/p95 per task."""
    hours = max(0.1, min(hours, 24.0))
    with translate_db_errors(), _sessions(request)() as session:
        per_task = charts.latency(session, hours=hours)
    run_scale = max([t["run_p95"] or 0 for t in per_task] + [0.001])
    wait_scale = max([t["wait_p95"] or 0 for t in per_task] + [0.001])
    return page(
        request,
        "charts.html",
        charts=throughput_charts(request),
        per_task=per_task,
        run_scale=run_scale,
        wait_scale=wait_scale,
        hours=hours,
    )
