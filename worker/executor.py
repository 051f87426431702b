"""Executor: run one handler with a timeout and classify how it ended."""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import threading
from collections.abc import Callable
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


class _Runner:
    """A long-lived thread that runs one handler call at a time for the Executor.

    Starting a thread per job cost ~160 us of CPU (~12% of a no-op job's worker CPU); a runner
    is handed the call through a queue instead and goes back to the idle list when it returns.
    """

    def __init__(self, pool: _Runners, name: str) -> None:
        self._pool = pool
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def run(self, call: Callable[[], None]) -> None:
        """Start `call` on this runner's thread."""
        self._calls.put(call)

    def stop(self) -> None:
        """End the thread once its current call (if any) returns."""
        self._calls.put(None)

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            call()  # never raises: the Executor's call catches everything
            self._pool.release(self)


class _Runners:
    """Idle runners, reused; a new one starts only when none is idle (e.g. all are busy, or
    some are stuck in handlers that ignored their timeout), and surplus idle ones end."""

    def __init__(self, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: list[_Runner] = []
        self._lock = threading.Lock()
        self._started = 0

    def acquire(self) -> _Runner:
        """An idle runner, or a new one."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self._started += 1
            name = f"jobq-handler-{self._started}"
        return _Runner(self, name)

    def release(self, runner: _Runner) -> None:
        """`runner` finished its call: keep it for the next, unless enough are idle."""
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(runner)
                return
        runner.stop()


class Executor:
    """Runs handlers; a handler that overruns its timeout is reported as a retryable failure."""

    def __init__(self, registry: Registry, default_timeout: float, *, max_idle: int = 64) -> None:
        self._registry = registry
        self._default_timeout = default_timeout
        self._runners = _Runners(max_idle)

    def run(self, ctx: JobContext, payload: dict[str, Any], timeout: float | None) -> Outcome:
        """Run the job's handler in its own thread and wait up to its timeout."""
        try:
            spec = self._registry.get(ctx.task)
            args = spec.parse_payload(payload)
        except Exception as exc:  # noqa: BLE001 - unknown task / bad payload: not retryable
            return Outcome(failure=Failure(f"{type(exc).__name__}: {exc}", False, "failed"))
        limit = timeout or spec.timeout_seconds or self._default_timeout
        box: dict[str, Any] = {}
        done = threading.Event()
        # Run in a copy of this context so the handler's log lines carry the job's trace id.
        context = contextvars.copy_context()

        def call() -> None:
            try:
                box["result"] = context.run(spec.handler, args, ctx)
            except BaseException as exc:  # noqa: BLE001 - everything a handler raises is data
                box["error"] = exc
            finally:
                done.set()

        # Another thread so the timeout can be enforced: Python cannot kill a thread, so a
        # handler that ignores ctx.cancelled keeps its runner busy after its attempt failed.
        self._runners.acquire().run(call)
        if not done.wait(limit) and not done.is_set():
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
