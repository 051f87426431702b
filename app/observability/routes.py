"""GET /metrics and GET /stats, and the middleware that measures every HTTP request."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from app.db import translate_db_errors
from app.observability import metrics
from app.observability.context import trace_id_var
from app.observability.stats import job_stats, queue_depths
from app.tracing import trace_id_from

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: counters, histograms, and sampled queue gauges."""
    body, content_type = metrics.render(request.app.state.sampled_metrics)
    return Response(body, media_type=content_type)


@router.get("/stats")
def stats(request: Request, minutes: int = 15) -> dict[str, Any]:
    """Counts by status and task, queue and DLQ depths, throughput, recent failures."""
    runtime = request.app.state.runtime
    minutes = max(1, min(minutes, 24 * 60))
    with translate_db_errors(), runtime.sessions() as session:
        data = job_stats(session, minutes=minutes)
    data.update(queue_depths(runtime.sqs))
    return data


def install_http_metrics(app: FastAPI) -> None:
    """Count and time every request by route template and status; bind its trace id."""

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        token = trace_id_var.set(trace_id_from(request.headers))
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Trace-Id"] = trace_id_var.get() or ""
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(request.method, path, str(status)).inc()
            metrics.HTTP_LATENCY.labels(request.method, path).observe(time.perf_counter() - start)
            trace_id_var.reset(token)
