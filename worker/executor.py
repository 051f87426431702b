"""Executor: run one handler with a timeout and classify how it ended."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from app.errors import TaskTimeout
from app.tasks.registry import JobContext, Registry
from worker.retry import Failure, classify

log = logging.getLogger("jobq.executor")


@dataclass(frozen=True)
class Outcome:
    """Success with a result, or a classified failure."""

    result: Any = None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """True on success."""
        return self.failure is None


class Executor:
    """Runs handlers; a handler that overruns its timeout is reported as a retryable failure."""

    def __init__(self, registry: Registry, default_timeout: float) -> None:
        self._registry = registry
        self._default_timeout = default_timeout

    def run(self, ctx: JobContext, payload: dict[str, Any], timeout: float | None) -> Outcome:
        """Run the job's handler in its own thread and wait up to its timeout."""
        try:
            spec = self._registry.get(ctx.task)
            args = spec.parse_payload(payload)
        except Exception as exc:  # noqa: BLE001 - unknown task / bad payload: not retryable
            return Outcome(failure=Failure(f"{type(exc).__name__}: {exc}", False, "failed"))
        limit = timeout or spec.timeout_seconds or self._default_timeout
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = spec.handler(args, ctx)
            except BaseException as exc:  # noqa: BLE001 - everything a handler raises is data
                box["error"] = exc

        # A separate thread so the timeout can be enforced: Python cannot kill a thread, so a
        # handler that ignores ctx.cancelled keeps running detached after its attempt failed.
        # Run in a copy of this context so the handler's log lines carry the job's trace id.
        context = contextvars.copy_context()
        thread = threading.Thread(
            target=context.run, args=(target,), name=f"job-{ctx.job_id}", daemon=True
        )
        thread.start()
        thread.join(limit)
        if thread.is_alive():
            ctx.cancelled.set()
            timeout_error = TaskTimeout(f"timed out after {limit:g} s")
            return Outcome(failure=classify(timeout_error, timed_out=True))
        if "error" in box:
            return Outcome(failure=classify(box["error"]))
        return Outcome(result=_jsonable(box.get("result")))


def _jsonable(value: Any) -> Any:
    """Results go into a JSONB column: pydantic models are dumped, other objects stringified."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {"repr": repr(value)}
