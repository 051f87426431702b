"""The one place that maps errors to HTTP responses: always JSON, never a bare 500 page."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from app.errors import DependencyUnavailable, JobqError

log = logging.getLogger("jobq.api")


class _AsciiJSON(JSONResponse):
    """JSON escaped to ASCII: an error may quote what the client sent (a field name), and that
    may be a lone surrogate UTF-8 cannot encode; the response must still be sent."""

    def render(self, content: Any) -> bytes:
        """Serialise `content` as ASCII JSON."""
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    about: Mapping[str, Any] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A JSON error body: {"error": {"code", "message", "field", **about}, **extra}."""
    error: dict[str, Any] = {"code": code, "message": message, "field": field}
    # What the error is about (e.g. the job a reused idempotency key belongs to), inside
    # "error" so a client reads it from the same place as the code.
    error.update({k: str(v) for k, v in (about or {}).items()})
    body: dict[str, Any] = {"error": error}
    body.update(extra)
    headers = dict(headers or {})
    if status == 503:
        headers.setdefault("Retry-After", "5")
    return _AsciiJSON(body, status_code=status, headers=headers or None)


def _field_path(loc: Any, kind: str | None = None) -> str:
    # A body that is not JSON at all is the body's fault (pydantic locates it at offset 0).
    if kind == "json_invalid":
        return "body"
    # Drop FastAPI's "body"/"query"/"path" prefix so the field reads like the request.
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _field_path(first.get("loc", ()), str(first.get("type") or ""))
    details = [
        {
            "field": _field_path(e.get("loc", ()), e.get("type")),
            "message": e.get("msg", ""),
            "type": e.get("type"),
        }
        for e in errors
    ]
    message = f"{field}: {first.get('msg', 'invalid')}"
    return error_response(422, "invalid_input", message, field, details=details)


def jobq_error_response(exc: JobqError) -> JSONResponse:
    """The response for one of our errors (logged when it is the server's side)."""
    if isinstance(exc, DependencyUnavailable):
        log.warning("dependency unavailable: %s", exc.message)
    elif exc.status_code >= 500:
        log.error("jobq error: %s", exc.message)
    return error_response(exc.status_code, exc.code, exc.message, exc.field, about=exc.details)


async def _jobq(request: Request, exc: JobqError) -> JSONResponse:
    return jobq_error_response(exc)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
    }.get(exc.status_code, "http_error")
    # 400 comes from FastAPI when the body cannot be parsed at all (e.g. nested too deep).
    field = "body" if exc.status_code in (400, 413) else None
    # Keep the exception's headers (405 carries Allow, as RFC 9110 requires).
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    return error_response(exc.status_code, code, str(exc.detail), field, headers=headers)


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route whose path matched, and one path has several
    # routes here (the fast submit path and the list): take every method the API documents
    # for this path. FastAPI caches the schema after its first build.
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {m.upper() for m in operations}
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Register every exception handler on the app."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(JobqError, _jobq)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
