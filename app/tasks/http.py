"""The built-in `http` task: call an external service, retrying what is worth retrying.

Contract in docs/http-task.md. Outbound connections go through app.egress, so loopback,
private and link-local addresses are refused unless JOBQ_HTTP_ALLOWED_NETWORKS allows them.
"""

from __future__ import annotations

import base64
import codecs
import re
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from app.config import get_settings
from app.egress import EgressDenied, EgressPolicy, guarded_client
from app.sqs.limits import MAX_VISIBILITY_TIMEOUT
from jobq import JobContext, PermanentError, Retry, RetryableError, task

DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 120.0
# The deadline is checked between body chunks and each read may wait the time that was left,
# so an attempt lasts at most about twice timeout_seconds; the task timeout is above that.
TASK_TIMEOUT_SECONDS = 2 * MAX_TIMEOUT_SECONDS + 30
DEFAULT_BODY_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_REDIRECTS = 5
MAX_HEADERS = 50
MAX_HEADER_BYTES = 16 * 1024
# The longest SQS can hide a message: a Retry-After beyond it is shortened to it.
MAX_RETRY_AFTER_SECONDS = MAX_VISIBILITY_TIMEOUT
# Response headers put in the result unless the payload names others (response_headers).
DEFAULT_RESULT_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "location",
    "etag",
    "last-modified",
    "retry-after",
    "date",
    "x-request-id",
)
# Framing and routing are httpx's to set; letting a payload set them invites smuggling.
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Statuses retried besides 5xx (request timeout, rate limited); other 4xx fail at once.
RETRYABLE_4XX = frozenset({408, 429})
SNIPPET_CHARS = 200
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# identity: the size cap then bounds the real body, not a compressed one that could inflate.
_DEFAULT_HEADERS = {"user-agent": "jobq-http", "accept-encoding": "identity"}


class HttpMethod(StrEnum):
    """Request methods the task sends."""

    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid header name")
    return name.lower()


class HttpRequest(BaseModel):
    """Payload of `http`: one request; `json` and `text` are alternative bodies."""

    model_config = ConfigDict(extra="forbid")

    method: HttpMethod = HttpMethod.GET
    url: str = Field(max_length=8192, examples=["https://api.example.com/v1/things"])
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_HEADERS)
    json_body: Any = Field(None, alias="json")
    text: str | None = Field(None, validate_default=True)
    timeout_seconds: float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS)
    max_body_bytes: int = Field(DEFAULT_BODY_BYTES, ge=0, le=MAX_BODY_BYTES)
    response_headers: list[str] | None = Field(None, max_length=MAX_HEADERS)
    follow_redirects: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError(f"is not a valid URL: {exc}") from exc
        if url.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not url.host:
            raise ValueError("must name a host")
        return value

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if _header_name(name) in FORBIDDEN_HEADERS:
                raise ValueError(f"{name!r} is set by the task itself")
            if any(c in item for c in "\r\n\x00"):
                raise ValueError(f"the value of {name!r} contains CR, LF or NUL")
        if sum(len(k) + len(v) for k, v in value.items()) > MAX_HEADER_BYTES:
            raise ValueError(f"must total at most {MAX_HEADER_BYTES} characters")
        return value

    @field_validator("text")
    @classmethod
    def _one_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("json_body") is not None:
            raise ValueError("give either json or text as the body, not both")
        return value

    @field_validator("response_headers")
    @classmethod
    def _header_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_header_name(n) for n in value]


@task("http", payload_model=HttpRequest, timeout_seconds=TASK_TIMEOUT_SECONDS)
def http(payload: HttpRequest, ctx: JobContext) -> dict[str, Any]:
    """Send the request; 2xx/3xx succeed, 5xx/408/429/network errors retry, other 4xx fail."""
    policy = EgressPolicy(get_settings().http_allowed_network_list)
    return call(payload, policy, ctx.cancelled)


def call(req: HttpRequest, policy: EgressPolicy, cancelled: threading.Event) -> dict[str, Any]:
    """Perform `req` under `policy`; the result dict, or a jobq error saying what to do."""
    started = time.monotonic()
    deadline = started + req.timeout_seconds
    try:
        with (
            guarded_client(
                policy,
                headers=_DEFAULT_HEADERS,
                follow_redirects=req.follow_redirects,
                max_redirects=MAX_REDIRECTS,
                event_hooks={"request": [_deadline_hook(deadline)]},
            ) as client,
            client.stream(req.method.value, req.url, **_body(req)) as resp,
        ):
            data, truncated = _read_capped(resp, req.max_body_bytes, deadline, cancelled)
    except EgressDenied as exc:
        raise PermanentError(exc.message) from exc
    except httpx.TimeoutException as exc:
        raise RetryableError(f"timed out after {req.timeout_seconds:g} s: {_what(exc)}") from exc
    except (httpx.TooManyRedirects, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        raise PermanentError(f"cannot complete the request: {_what(exc)}") from exc
    except httpx.HTTPError as exc:
        raise RetryableError(f"request failed: {_what(exc)}") from exc
    body, encoding = _decode(data, resp.charset_encoding, truncated)
    _raise_for_status(resp, body if encoding == "text" else "")
    wanted = req.response_headers if req.response_headers is not None else DEFAULT_RESULT_HEADERS
    return {
        "status": resp.status_code,
        "headers": {name: resp.headers[name] for name in wanted if name in resp.headers},
        "body": body,
        "body_encoding": encoding,
        "truncated": truncated,
        "url": str(resp.url.copy_with(userinfo=b"")),
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _body(req: HttpRequest) -> dict[str, Any]:
    """The httpx keyword arguments for the payload's headers and body."""
    headers = dict(req.headers)
    if req.json_body is not None:
        return {"headers": headers, "json": req.json_body}
    if req.text is not None:
        if not any(name.lower() == "content-type" for name in headers):
            headers["content-type"] = "text/plain; charset=utf-8"
        return {"headers": headers, "content": req.text.encode()}
    return {"headers": headers}


def _deadline_hook(deadline: float) -> Any:
    """A request hook giving each hop (redirects too) only the time left of timeout_seconds."""

    def hook(request: httpx.Request) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpx.TimeoutException("no time left for the next redirect", request=request)
        request.extensions["timeout"] = httpx.Timeout(left).as_dict()

    return hook


def _read_capped(
    resp: httpx.Response, cap: int, deadline: float, cancelled: threading.Event
) -> tuple[bytes, bool]:
    """At most `cap` bytes of the body as sent (no decompression); True if there was more."""
    data = bytearray()
    for chunk in resp.iter_raw():
        data += chunk
        if len(data) > cap:
            return bytes(data[:cap]), True  # leaving the stream closes the connection
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the body took longer than timeout_seconds", request=None)
        if cancelled.is_set():
            raise RetryableError("the attempt was cancelled while reading the body")
    return bytes(data), False


def _decode(data: bytes, charset: str | None, truncated: bool) -> tuple[str, str]:
    """The body as text if it decodes (a cut multi-byte character is dropped), else base64."""
    try:
        text = codecs.getincrementaldecoder(charset or "utf-8")().decode(data, final=not truncated)
    except (LookupError, UnicodeDecodeError):
        text = None
    if text is None or "\x00" in text:  # PostgreSQL's jsonb cannot store NUL characters
        return base64.b64encode(data).decode("ascii"), "base64"
    return text, "text"


def _raise_for_status(resp: httpx.Response, text: str) -> None:
    """Retry 5xx, 408 and 429 (after Retry-After if given); fail other 4xx for good."""
    status = resp.status_code
    if status < 400:
        return
    where = resp.request.url.copy_with(userinfo=b"", query=None, fragment=None)
    snippet = " ".join(text[:SNIPPET_CHARS].split())
    message = f"HTTP {status} {resp.reason_phrase} from {resp.request.method} {where}"
    message += f": {snippet}" if snippet else ""
    if status >= 500 or status in RETRYABLE_4XX:
        delay = retry_after_seconds(resp.headers.get("retry-after"))
        if delay is not None:
            raise Retry(in_seconds=delay, reason=f"{message} (Retry-After: {delay:g} s)")
        raise RetryableError(message)
    raise PermanentError(message)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), capped."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # unparseable: the normal backoff applies
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), float(MAX_RETRY_AFTER_SECONDS))


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
