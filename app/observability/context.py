"""The trace id of the work at hand, attached to every log line written while it runs."""

from __future__ import annotations

from contextvars import ContextVar

trace_id_var: ContextVar[str | None] = ContextVar("jobq_trace_id", default=None)
