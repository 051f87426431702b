"""Executor: run one handler (sync, async, or isolated in a child process) and classify how
its run ended.

Sync handlers run on reused runner threads; `async def` handlers run as tasks on event loops
the worker owns, side by side. A timeout, a cancellation request, the shutdown grace running out
or a lost lease cancel the run for real where Python allows it: an async task is cancelled
(asyncio cancellation), an isolated child process is killed. A sync handler in a thread can
only be asked (`ctx.cancelled`); its run is recorded as ended all the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.loops import BackgroundLoop
from app.tasks.registry import JobContext, Registry, TaskSpec
from worker import isolated
from worker.encode import ResultError, encode_result
from worker.retry import Failure, classify, permanent, timed_out

log = logging.getLogger("jobq.executor")


@dataclass(frozen=True)
class Outcome:
    """Success with a result (JSON text, already checked), or a classified failure."""

    result: str | None = None
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """True on success."""
        return self.failure is None


@dataclass(frozen=True)
class Limits:
    """What the executor enforces on every run."""

    default_timeout: float
    max_result_bytes: int = 1024 * 1024
    max_traceback_bytes: int = 16 * 1024


class _Runner(BackgroundLoop):
    """A long-lived thread that runs one handler call at a time for the Executor.

    Starting a thread per job cost ~160 us of CPU (~12% of a no-op job's worker CPU); a runner
    is handed the call through a queue instead and goes back to the idle list when it returns.
    """

    def __init__(self, pool: _Runners, name: str) -> None:
        super().__init__(name)
        self._pool = pool
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.start()

    def submit(self, call: Callable[[], None]) -> None:
        """Start `call` on this runner's thread."""
        self._calls.put(call)

    def wake(self) -> None:
        """End the thread once its current call (if any) returns."""
        self._calls.put(None)

    def run(self) -> None:
        """Run calls until told to stop."""
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
        runner.signal_stop()


class EventLoop(BackgroundLoop):
    """A thread running an asyncio event loop on which async handlers run as tasks."""

    def __init__(self, name: str = "jobq-async") -> None:
        super().__init__(name)
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        """Run the loop until stopped."""
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def wake(self) -> None:
        """Stop the loop (cancelled handlers' tasks end with it)."""
        self.loop.call_soon_threadsafe(self.loop.stop)


class Executor:
    """Runs handlers and turns however they end into an Outcome."""

    def __init__(self, registry: Registry, limits: Limits, *, max_idle: int = 64) -> None:
        self._registry = registry
        self._limits = limits
        self._runners = _Runners(max_idle)
        self._loop: EventLoop | None = None
        self._loop_lock = threading.Lock()

    def close(self) -> None:
        """Stop the event loop thread (if one was started)."""
        if self._loop is not None:
            self._loop.stop(2.0)

    def run(
        self,
        ctx: JobContext,
        payload: dict[str, Any],
        timeout: float | None,
        *,
        isolate: bool = False,
    ) -> Outcome:
        """Run the job's handler and wait up to its timeout (on the calling thread)."""
        try:
            spec = self._registry.get(ctx.task)
            args = spec.parse_payload(payload)
        except Exception as exc:  # noqa: BLE001 - unknown task / bad payload: not retryable
            return Outcome(failure=classify(exc, max_traceback=self._limits.max_traceback_bytes))
        limit = timeout or spec.timeout_seconds or self._limits.default_timeout
        if isolate:
            return self._finish(
                isolated.run(spec.name, self._registry.modules, payload, ctx, limit)
            )
        box: dict[str, Any] = {}
        done = threading.Event()
        if spec.is_async:
            self._start_async(spec, args, ctx, box, done)
        else:
            self._start_sync(spec, args, ctx, box, done)
        if not done.wait(limit):
            ctx.cancelled.cancel("timeout")
            return Outcome(failure=timed_out(limit))
        if "error" in box:
            return Outcome(
                failure=classify(box["error"], max_traceback=self._limits.max_traceback_bytes)
            )
        return self._finish(("ok", box.get("result")), spec=spec)

    def _finish(self, ended: tuple[str, Any], spec: TaskSpec | None = None) -> Outcome:
        kind, value = ended
        if kind == "failure":
            return Outcome(failure=value)
        if kind == "json":  # already encoded and checked (an isolated run)
            return Outcome(result=value)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: close it instead of leaving a RuntimeWarning
            name = spec.name if spec else "?"
            return Outcome(
                failure=permanent(
                    f"task {name!r} returned an awaitable from a plain function: declare the "
                    "handler `async def` (jobq awaits those) instead of returning a coroutine"
                )
            )
        try:
            return Outcome(result=encode_result(value, max_bytes=self._limits.max_result_bytes))
        except ResultError as exc:
            return Outcome(failure=permanent(str(exc)))

    def _start_sync(
        self, spec: TaskSpec, args: Any, ctx: JobContext, box: dict[str, Any], done: threading.Event
    ) -> None:
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
        # handler that ignores ctx.cancelled keeps its runner busy after its run was recorded.
        self._runners.acquire().submit(call)

    def _start_async(
        self, spec: TaskSpec, args: Any, ctx: JobContext, box: dict[str, Any], done: threading.Event
    ) -> None:
        loop = self._event_loop()
        context = contextvars.copy_context()

        async def call() -> None:
            try:
                box["result"] = await spec.handler(args, ctx)
            except BaseException as exc:  # noqa: BLE001 - CancelledError included: it is data
                box["error"] = exc
            finally:
                done.set()

        def start() -> None:
            task = loop.create_task(call(), context=context)

            # A cancellation of any kind (timeout, request, shutdown, lease) cancels the task.
            def cancel_task() -> None:
                loop.call_soon_threadsafe(task.cancel)

            ctx.cancelled.on_cancel(cancel_task)

        loop.call_soon_threadsafe(start)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                self._loop = EventLoop()
                self._loop.start()
            return self._loop.loop
