"""Completion callbacks: the URL check at submit, and the signature receivers verify.

When a job with a `callback_url` reaches a final status, a trigger (migration 0008) inserts a
`jobq.callback` job in the same transaction; that job POSTs the finished job's JSON
(app/tasks/callback.py) and is retried like any other job. Each POST carries

    Jobq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(JOBQ_CALLBACK_SECRET, "<t>." + body)>

so a receiver recomputes the HMAC over the raw body and refuses stale timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from app.errors import InvalidInput

SIGNATURE_HEADER = "Jobq-Signature"
# The delivery task. Only the trigger creates its jobs: one submitted through the API could
# have jobq sign a body of the submitter's choosing, and forge callbacks to any receiver.
CALLBACK_TASK = "jobq.callback"
DEFAULT_TOLERANCE_SECONDS = 300.0


def check_callback_url(url: str | None) -> str | None:
    """An http(s) URL with a host, or InvalidInput naming `callback_url`."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("callback_url must be an http:// or https:// URL", field="callback_url")
    return url


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Jobq-Signature header value for `body`, signed now (or at `timestamp`)."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={_mac(secret, at, body)}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True if `header` (Jobq-Signature) signs `body` with `secret` within `tolerance` s."""
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - at) > tolerance:
        return False
    return hmac.compare_digest(fields.get("v1", ""), _mac(secret, at, body))
