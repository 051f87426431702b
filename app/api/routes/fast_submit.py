"""The hot path for `POST /jobs`: the same validation and service call without FastAPI's
router, dependency solving and request objects (about a third of the API's CPU per submit)."""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import jobq_error_response
from app.errors import JobqError
from app.jobs.schemas import JobCreate
from app.jobs.service import JobService
from app.observability.trace import trace_id_from, trace_id_var

PATH = "/jobs"
_JSON = b"application/json"


class _Route:
    """Stands in for the FastAPI route in scope["route"]: its path template is what HttpMetrics
    (and tracing instrumentation) read; FastAPI nests included routers, so the real route object
    cannot simply be looked up in app.router.routes."""

    path = PATH
    methods = frozenset({"POST"})
    name = "submit_job"


ROUTE = _Route()


def eligible(scope: Scope) -> bool:
    """A plain JSON `POST /jobs` with no Idempotency-Key header (keyed submits, other
    content types and everything else take the full route)."""
    if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
        return False
    json_body = False
    for name, value in scope["headers"]:
        if name == b"idempotency-key":
            return False
        if name == b"content-type":
            json_body = value.split(b";", 1)[0].strip().lower() == _JSON
    return json_body


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastSubmit:
    """Serves eligible `POST /jobs` requests directly; a body that does not parse or validate
    is replayed to the full FastAPI route, so every error answers exactly as documented.

    Sits inside the auth, rate-limit, body-size and metrics middleware, which see it as the
    `/jobs` route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not eligible(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        try:
            req = JobCreate.model_validate(json.loads(body))
        except (ValueError, RecursionError, ValidationError):
            # Bad JSON, nesting too deep, invalid fields: the full route words the 4xx.
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = ROUTE  # metrics label the request by the route it stands in for
        service: JobService = scope["app"].state.jobs
        trace_id = trace_id_var.get() or trace_id_from(Headers(scope=scope))
        try:
            job, created = await service.submit_async(req, trace_id=trace_id)
        except JobqError as exc:
            await jobq_error_response(exc)(scope, receive, send)
            return
        payload = job.model_dump_json().encode()
        await send(
            {
                "type": "http.response.start",
                "status": 201 if created else 200,  # 200: a replay of an idempotency key
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", _JSON),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body over once, then defers to the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
