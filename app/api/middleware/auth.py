"""Authentication (API keys) and the per-key submit rate limit for every endpoint but the probes."""

from __future__ import annotations

import math
import time

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.errors import error_response
from app.api.middleware.rate_limit import RateLimiter
from app.auth.keys import KeySet, Principal, credential, hash_key

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
SUBMIT_PATHS = frozenset({"/jobs", "/jobs/batch"})


class ApiKeyAuth:
    """Pure ASGI middleware: require a valid key (when enabled), apply the submit rate limit.

    A key accepted once is trusted for `cache_seconds` without asking the KeySet again (whose
    lookup may read the keys table, so it runs in a worker thread): a request then needs no
    thread hand-off for authentication. Revocation takes effect within the KeySet's reload
    interval plus `cache_seconds`.
    """

    CACHE_MAX = 1024

    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool,
        limiter: RateLimiter | None,
        cache_seconds: float = 1.0,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.limiter = limiter
        self.cache_seconds = cache_seconds
        # sha256(key) -> (principal, trusted until); only accepted keys.
        self._accepted: dict[str, tuple[Principal, float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        refusal = await self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope) -> Response | None:
        path, method = scope["path"], scope["method"]
        client = scope.get("client")
        who = client[0] if client else "unknown"
        if self.enabled:
            keys: KeySet = scope["app"].state.keys
            key = credential(Headers(scope=scope).get("authorization"))
            principal = await self._lookup(keys, key) if key else None
            if principal is None:
                scheme = 'Basic realm="jobq"' if path.startswith("/dashboard") else "Bearer"
                return error_response(
                    401,
                    "unauthorized",
                    "a valid API key is required: Authorization: Bearer <key>",
                    "Authorization",
                    headers={"WWW-Authenticate": scheme},
                )
            if not principal.may(method):
                return error_response(
                    403, "forbidden", f"key {principal.name!r} is read-only", "Authorization"
                )
            who = f"key:{principal.name}"
            # request.state.principal: the dashboard shows actions to submit keys only and
            # names the key in its audit log.
            scope.setdefault("state", {})["principal"] = principal
        if self.limiter is not None and method == "POST" and path in SUBMIT_PATHS:
            wait = self.limiter.take(who)
            if wait > 0:
                return error_response(
                    429,
                    "rate_limited",
                    f"submit rate limit of {self.limiter.rate:g}/s exceeded (JOBQ_SUBMIT_RATE)",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return None

    async def _lookup(self, keys: KeySet, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._accepted.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal: Principal | None = await run_in_threadpool(keys.lookup, key)
        if principal is None:
            self._accepted.pop(digest, None)
        elif self.cache_seconds > 0:
            if len(self._accepted) >= self.CACHE_MAX:
                self._accepted.clear()
            self._accepted[digest] = (principal, now + self.cache_seconds)
        return principal
