"""How `jobq api` serves HTTP: uvicorn's options from settings, and a protocol that bounds what
slow, idle or too many clients can hold (docs/operations-limits.md).

uvicorn times out idle keep-alive connections but not a request whose headers never finish:
10,500 connections that sent half a request line each kept their file descriptors until the
process had none left (20,000) and stopped answering. GuardedHttpToolsProtocol gives headers
JOBQ_API_HEADER_TIMEOUT_SECONDS and a body JOBQ_API_BODY_TIMEOUT_SECONDS in total (a client
trickling a byte a second gains nothing), and answers 503 to connections beyond
JOBQ_API_MAX_CONNECTIONS instead of holding them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings

log = logging.getLogger("jobq.api")

# Descriptors kept for what is not a client connection: the PostgreSQL pool, SQS clients'
# pools (publisher, dispatcher, probe), log and metrics files, the listening socket.
RESERVED_FDS = 256
# An unlimited hard limit is raised to this, not to infinity (Linux refuses above nr_open).
MAX_FDS = 1 << 20


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_FDS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return MAX_FDS if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class ConnectionLimits:
    """What one API process allows its clients."""

    max_connections: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        """The configured limits; never more connections than descriptors to hold them."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        room = MAX_FDS if soft == resource.RLIM_INFINITY else soft - RESERVED_FDS
        return cls(
            max_connections=max(1, min(settings.api_max_connections, room)),
            header_timeout=settings.api_header_timeout_seconds,
            body_timeout=settings.api_body_timeout_seconds,
        )


def _canned(status: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": {"code": "connection_refused", "message": message, "field": None}})
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body.encode()
    )


_TOO_MANY = _canned(
    "503 Service Unavailable",
    "too many connections (JOBQ_API_MAX_CONNECTIONS); retry shortly",
    b"retry-after: 1\r\n",
)
_HEADER_TIMEOUT = _canned(
    "408 Request Timeout", "request headers not received in time (JOBQ_API_HEADER_TIMEOUT_SECONDS)"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a connection cap and header/body deadlines.

    Limits are class-wide: set by `configure()` in `jobq api`, or read from the environment by
    the first connection (each of several API processes loads the class itself).
    """

    limits: ClassVar[ConnectionLimits | None] = None
    # Refusals since the last warning: one log line per WARN_EVERY seconds, not per refusal.
    WARN_EVERY: ClassVar[float] = 10.0
    _refused: ClassVar[int] = 0
    _warned_at: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpToolsProtocol.limits is None:
            GuardedHttpToolsProtocol.configure(get_settings())
        assert GuardedHttpToolsProtocol.limits is not None
        self._limits = GuardedHttpToolsProtocol.limits
        self._deadline: asyncio.TimerHandle | None = None

    @classmethod
    def configure(cls, settings: Settings) -> ConnectionLimits:
        """Set the limits every connection of this process gets."""
        cls.limits = ConnectionLimits.from_settings(settings)
        return cls.limits

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse beyond the cap; otherwise the request's headers are due within the timeout."""
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            transport.write(_TOO_MANY)
            transport.close()
            self._count_refusal()
            return
        self._arm(self._limits.header_timeout, self._headers_late)

    def on_message_begin(self) -> None:
        """A request starts (the next one on a kept-alive connection too): headers are due."""
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self._limits.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        """Headers in time; the body (if any) is due within the body timeout."""
        self._disarm()
        super().on_headers_complete()
        self._arm(self._limits.body_timeout, self._body_late)

    def on_message_complete(self) -> None:
        """The whole request arrived: no deadline while the app answers it."""
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _count_refusal(self) -> None:
        cls = GuardedHttpToolsProtocol
        cls._refused += 1
        now = time.monotonic()
        if now - cls._warned_at >= cls.WARN_EVERY:
            log.warning(
                "refused %d connection(s): %d open, the limit (JOBQ_API_MAX_CONNECTIONS)",
                cls._refused,
                len(self.connections) - 1,
            )
            cls._refused, cls._warned_at = 0, now

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_HEADER_TIMEOUT)
        self.transport.close()

    def _body_late(self) -> None:
        # The app sees http.disconnect; a half-sent body cannot be answered meaningfully.
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run that `jobq api` serves with."""
    forwarded = [ip.strip() for ip in settings.forwarded_allow_ips.split(",") if ip.strip()]
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "timeout_graceful_shutdown": 10,
        "http": GuardedHttpToolsProtocol,
        # X-Forwarded-For/-Proto are believed only from these peers (the ALB); from anyone
        # else a client could pick its own address and dodge the per-client rate limit.
        "proxy_headers": bool(forwarded),
        "forwarded_allow_ips": forwarded or None,
        "timeout_keep_alive": settings.api_keep_alive_seconds,
        "backlog": settings.api_backlog,
        # Every connection runs at most one request at a time, so the connection cap bounds
        # concurrent requests too; uvicorn's limit_concurrency would add nothing.
    }
