"""Authentication and per-key submit rate limiting for every endpoint but the probes."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from app.auth.keys import KeySet, Principal, credential
from app.http_errors import error_response

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
SUBMIT_PATHS = frozenset({"/jobs", "/jobs/batch"})


class RateLimiter:
    """Token bucket per caller: `rate` submissions per second, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 if allowed now, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(who, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate


def install_auth(app: FastAPI, *, enabled: bool, limiter: RateLimiter | None) -> None:
    """Require a valid key (when enabled) and apply the submit rate limit."""

    @app.middleware("http")
    async def authenticate(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if path in PUBLIC_PATHS:
            return await call_next(request)
        who = request.client.host if request.client else "unknown"
        if enabled:
            keys: KeySet = request.app.state.keys
            key = credential(request.headers.get("authorization"))
            principal: Principal | None = await run_in_threadpool(keys.lookup, key) if key else None
            if principal is None:
                scheme = 'Basic realm="jobq"' if path.startswith("/dashboard") else "Bearer"
                return error_response(
                    401,
                    "unauthorized",
                    "a valid API key is required: Authorization: Bearer <key>",
                    "Authorization",
                    headers={"WWW-Authenticate": scheme},
                )
            if not principal.may(request.method):
                return error_response(
                    403, "forbidden", f"key {principal.name!r} is read-only", "Authorization"
                )
            who = f"key:{principal.name}"
        if limiter is not None and request.method == "POST" and path in SUBMIT_PATHS:
            wait = limiter.take(who)
            if wait > 0:
                return error_response(
                    429,
                    "rate_limited",
                    f"submit rate limit of {limiter.rate:g}/s exceeded (JOBQ_SUBMIT_RATE)",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await call_next(request)
