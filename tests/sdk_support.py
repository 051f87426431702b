"""httpx transports for the SDK tests: they forward to the real server, record what was sent,
and can lose a response (the request reached the server, its answer never reaches the client)
or put a refusal in front of the server."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

Match = Callable[[httpx.Request], bool]


def posts_to(path: str) -> Match:
    """A matcher for POST requests to `path`."""
    return lambda r: r.method == "POST" and r.url.path == path


@dataclass
class Faults:
    """What to do to the next matching requests; shared by the sync and async transports."""

    drop: Match | None = None  # forward, then lose the response this many times
    drops: int = 1
    refuse: Match | None = None  # answer this response instead of forwarding
    refusal: tuple[int, dict[str, str]] = (503, {"Retry-After": "1"})
    refusals: int = 1
    sent: list[httpx.Request] = field(default_factory=list)

    def record(self, request: httpx.Request) -> httpx.Response | None:
        """Note the request; a refusal to answer instead of the server, if one is due."""
        self.sent.append(request)
        if self.refuse is not None and self.refusals > 0 and self.refuse(request):
            self.refusals -= 1
            status, headers = self.refusal
            body = {"error": {"code": "unavailable", "message": "injected", "field": None}}
            return httpx.Response(status, headers=headers, json=body, request=request)
        return None

    def lose(self, request: httpx.Request) -> bool:
        """True if this request's response is to be lost."""
        if self.drop is not None and self.drops > 0 and self.drop(request):
            self.drops -= 1
            return True
        return False

    def calls(self, method: str, path: str) -> list[httpx.Request]:
        """The requests sent with this method to this path."""
        return [r for r in self.sent if r.method == method and r.url.path == path]

    def bodies(self, path: str) -> list[Any]:
        """The JSON bodies POSTed to this path, in order."""
        return [json.loads(r.content) for r in self.calls("POST", path)]


class Transport(httpx.BaseTransport):
    """Sync: forwards over a real HTTPTransport, applying `faults`."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Forward (or refuse) one request."""
        refusal = self.faults.record(request)
        if refusal is not None:
            return refusal
        response = self._inner.handle_request(request)
        if self.faults.lose(request):
            response.read()  # the server answered in full; the client never sees it
            response.close()
            raise httpx.ReadError("response lost on purpose", request=request)
        return response

    def close(self) -> None:
        """Close the real transport."""
        self._inner.close()


class AsyncTransport(httpx.AsyncBaseTransport):
    """Async: forwards over a real AsyncHTTPTransport, applying `faults`."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward (or refuse) one request."""
        refusal = self.faults.record(request)
        if refusal is not None:
            return refusal
        response = await self._inner.handle_async_request(request)
        if self.faults.lose(request):
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("response lost on purpose", request=request)
        return response

    async def aclose(self) -> None:
        """Close the real transport."""
        await self._inner.aclose()


def job_count(db: Any) -> int:
    """How many jobs the database holds."""
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        return int(cur.fetchone()[0])
