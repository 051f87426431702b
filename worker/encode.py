"""What a handler returns or raises, made storable: strict JSON results, readable errors.

Results follow one documented rule: JSON types as they are; pydantic models as
`model_dump(mode="json")`; datetime, date and time as ISO 8601 strings; UUIDs and Decimals as
strings; enums as their value; tuples as lists. Anything else (sets, bytes, custom objects),
NaN or Infinity, text with NUL or lone surrogates, nesting too deep to encode, or a result over
JOBQ_MAX_RESULT_BYTES is an error naming what was wrong; never a silent repr.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import traceback
import uuid
from typing import Any

TRUNCATED = "\n… (truncated)"
ERROR_MAX_CHARS = 4000


class ResultError(ValueError):
    """A handler's result cannot be stored as JSON (a permanent failure of the attempt)."""


def _default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise ResultError(
        f"result is not JSON: a {type(value).__module__}.{type(value).__qualname__} "
        "cannot be encoded (return dicts, lists, strings, numbers, booleans, None, or a "
        "pydantic model)"
    )


def encode_result(value: Any, *, max_bytes: int) -> str | None:
    """The result as JSON text for the JSONB column (None stays None); ResultError if not."""
    if value is None:
        return None
    try:
        text = json.dumps(value, default=_default, allow_nan=False, ensure_ascii=False)
    except ResultError:
        raise
    except RecursionError as exc:
        raise ResultError("result is nested too deeply to encode as JSON") from exc
    except ValueError as exc:  # allow_nan=False
        raise ResultError(f"result is not JSON: {exc} (NaN and Infinity are not JSON)") from exc
    except TypeError as exc:  # e.g. dict keys that are not strings
        raise ResultError(f"result is not JSON: {exc}") from exc
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ResultError("result text contains a lone surrogate (not valid Unicode)") from exc
    if "\\u0000" in text:
        raise ResultError("result text contains a NUL character (\\u0000), which cannot be stored")
    if size > max_bytes:
        raise ResultError(
            f"result is {size} bytes, over the {max_bytes}-byte limit (JOBQ_MAX_RESULT_BYTES)"
        )
    return text


def safe_text(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """Text PostgreSQL stores as is: NUL and lone surrogates escaped, length capped."""
    cleaned = text.replace("\x00", "\\x00")
    cleaned = cleaned.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(cleaned) > limit:
        cleaned = cleaned[: max(0, limit - len(TRUNCATED))] + TRUNCATED
    return cleaned


def describe(exc: BaseException) -> str:
    """`Type: message` for any exception, even one whose __str__ raises."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception as inner:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        message = f"<str() of the exception failed: {type(inner).__name__}>"
    return safe_text(f"{name}: {message}" if message else name)


def format_traceback(exc: BaseException, *, max_bytes: int) -> str:
    """The formatted traceback, safe to store, cut to `max_bytes` (its end is kept)."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - e.g. a broken __str__ inside a chained exception
        text = "".join(traceback.format_tb(exc.__traceback__)) + describe(exc)
    text = safe_text(text, limit=10**9)
    if len(text.encode("utf-8")) > max_bytes:
        # The innermost frames and the error are at the end: keep those.
        text = "… (truncated)\n" + text.encode("utf-8")[-max_bytes:].decode("utf-8", "ignore")
    return text
