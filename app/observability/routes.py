"""GET /metrics and GET /stats, and the middleware that measures every HTTP request."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class HttpMetrics:
    """Pure ASGI middleware (no per-request task group): count and time every request by
    route template and status, bind its trace id, and return it as X-Trace-Id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = trace_id_from(Headers(scope=scope))
        token = trace_id_var.set(trace_id)
        start = time.perf_counter()
        status = 500

        async def send_with_trace(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Trace-Id", trace_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            # The router records the matched route in the (shared) scope.
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            metrics.HTTP_REQUESTS.labels(method, path, str(status)).inc()
            metrics.HTTP_LATENCY.labels(method, path).observe(time.perf_counter() - start)
            trace_id_var.reset(token)
