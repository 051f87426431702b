"""Completion callbacks: the URL check at submit (delivery is the jobq.callback task)."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.errors import InvalidInput


def check_callback_url(url: str | None) -> str | None:
    """An http(s) URL with a host, or InvalidInput naming `callback_url`."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("callback_url must be an http:// or https:// URL", field="callback_url")
    return url
