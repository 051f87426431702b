"""HTTP metrics and trace ids for every request."""

from __future__ import annotations

import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import metrics
from app.observability.trace import trace_id_from, trace_id_var


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
