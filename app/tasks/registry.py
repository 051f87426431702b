"""Register plain functions as tasks and validate payloads against their models."""

from __future__ import annotations

import importlib
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pydantic import BaseModel, ValidationError

from app.errors import InvalidInput, JobqError, Snooze
from app.tasks.limits import Rate, check_queue_name, parse_rate
from app.tasks.retry import Backoff, as_backoff

Handler = Callable[[Any, "JobContext"], Any]
MAX_PROGRESS_MESSAGE = 1000  # characters of a progress message that are kept
# Modules of the tasks every process has, imported before JOBQ_TASK_MODULES.
BUILTIN_MODULES = ("app.tasks.builtin", "app.tasks.http", "app.tasks.callback")
PRIORITIES = ("high", "default", "low")


class Cancellation(threading.Event):
    """`ctx.cancelled`: an Event, that also records why it was set and runs callbacks then
    (the worker uses them to cancel an async handler's task or kill an isolated runner).

    It also knows the instant (time.monotonic()) by which the worker must have renewed the
    job's lease: past it, `is_set()` and `wait()` report a `lease_lost` cancellation by
    themselves, so a handler that checks before each side effect does none after its worker
    lost the job, even when the worker's own threads were paused (SIGSTOP, a frozen VM) and
    nothing else has run yet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None  # cancelled, timeout, shutdown or lease_lost
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()
        self._deadline: float | None = None

    def expire_at(self, deadline: float | None) -> None:
        """Count as cancelled (`lease_lost`) from this time.monotonic() instant on."""
        self._deadline = deadline

    def _expired(self) -> bool:
        deadline = self._deadline
        if deadline is not None and time.monotonic() >= deadline:
            self.cancel("lease_lost")
            return True
        return False

    def is_set(self) -> bool:
        """True once cancelled (for any reason), or once the lease deadline passed."""
        return super().is_set() or self._expired()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until cancelled or `timeout` passes; wakes at the lease deadline too."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            deadline = self._deadline
            limits = [x - time.monotonic() for x in (end, deadline) if x is not None]
            if super().wait(max(0.0, min(limits)) if limits else None):
                return True
            if self._expired():
                return True
            if end is not None and time.monotonic() >= end:
                return False

    def cancel(self, reason: str) -> None:
        """Set the event (the first reason wins) and run the callbacks once."""
        with self._guard:
            if super().is_set():
                return
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
            super().set()
        for callback in callbacks:
            callback()

    def set(self) -> None:
        """Plain set() counts as a cancellation request."""
        self.cancel("cancelled")

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Run `callback` when cancelled (at once if already)."""
        with self._guard:
            if not super().is_set():
                self._callbacks.append(callback)
                return
        callback()


@dataclass
class JobContext:
    """What a running handler knows about its job.

    `attempt` counts runs of this job's handler (1 on the first); `failures` how many of them
    failed. `cancelled` is set when the job is cancelled, times out, its worker shuts down or
    loses the job's lease: a handler that checks it can stop early.
    """

    job_id: uuid.UUID
    task: str
    attempt: int
    max_attempts: int
    failures: int = 0
    cancelled: Cancellation = field(default_factory=Cancellation)
    # A workflow job's parents, in depends_on order: {"id", "task", "status", "result",
    # "error"} each, as they were when this job was queued.
    parents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def parent_results(self) -> list[Any]:
        """The parents' results in depends_on order (None for a parent that did not succeed)."""
        return [p.get("result") if p.get("status") == "succeeded" else None for p in self.parents]

    # The latest ctx.progress() not yet written (the worker writes it, throttled).
    _progress: tuple[float, str | None] | None = field(default=None, repr=False)
    _progress_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the run is (0.0-1.0) with an optional message; never blocks.

        The worker writes the latest report about once a second (JOBQ_PROGRESS_INTERVAL_SECONDS),
        so calling this in a tight loop is cheap. It shows in GET /jobs/{id} as `progress`,
        `progress_message` and `progress_at`.
        """
        value = float(fraction)
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"progress must be between 0 and 1, not {fraction!r}")
        text = None if message is None else str(message)[:MAX_PROGRESS_MESSAGE]
        with self._progress_lock:
            self._progress = (value, text)

    def take_progress(self) -> tuple[float, str | None] | None:
        """The report not yet written, if any (and forget it): the worker's side."""
        with self._progress_lock:
            report, self._progress = self._progress, None
        return report

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now will not be retried."""
        return self.failures + 1 >= self.max_attempts

    def snooze(self, seconds: float, reason: str = "snoozed") -> NoReturn:
        """Run this job again in `seconds` without using an attempt (raises Snooze)."""
        raise Snooze(seconds, reason)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its handler, payload model, timeout and retry policy."""

    name: str
    handler: Handler
    payload_model: type[BaseModel] | None = None
    timeout_seconds: float | None = None
    max_attempts: int | None = None
    backoff: Backoff | None = None
    description: str = ""
    # A cron expression (and its time zone): the task also runs on this schedule
    # (app/schedules; upserted by workers and the ticker at start).
    schedule: str | None = None
    tz: str = "UTC"
    # Flow control (docs/flow-control.md): the named queue its jobs go to by default, and
    # limits every worker enforces together when it claims.
    queue: str | None = None
    rate_limit: Rate | None = None
    max_concurrency: int | None = None
    priority: str | None = None  # the jobs' priority when a submit names none

    @property
    def is_async(self) -> bool:
        """True for an `async def` handler (run on the worker's event loop)."""
        return inspect.iscoroutinefunction(self.handler)

    def parse_payload(self, payload: dict[str, Any]) -> Any:
        """The payload as the handler receives it (a model instance when one is declared)."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)


class Registry:
    """Task name -> TaskSpec, filled by the @task decorator and JOBQ_TASK_MODULES."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskSpec] = {}
        self._lock = threading.Lock()
        self.modules: list[str] = []  # user modules loaded (an isolated runner loads them too)

    def register(
        self,
        name: str,
        *,
        payload_model: type[BaseModel] | None = None,
        timeout_seconds: float | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | float | Sequence[float] | None = None,
        description: str | None = None,
        schedule: str | None = None,
        tz: str = "UTC",
        queue: str | None = None,
        rate_limit: str | None = None,
        max_concurrency: int | None = None,
        priority: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register `handler(payload, ctx)` (sync or `async def`) under `name`;
        `schedule` (cron, in time zone `tz`) also runs it with an empty payload per tick."""
        if max_attempts is not None and max_attempts < 1:
            raise JobqError(f"task {name!r}: max_attempts must be at least 1")
        if schedule is not None:
            _check_schedule(name, schedule, tz)
        retry_schedule = as_backoff(backoff)
        if max_concurrency is not None and max_concurrency < 1:
            raise JobqError(f"task {name!r}: max_concurrency must be at least 1")
        try:
            rate = parse_rate(rate_limit) if rate_limit is not None else None
            if queue is not None:
                check_queue_name(queue)
        except ValueError as exc:
            raise JobqError(f"task {name!r}: {exc}") from exc
        if priority not in (None, *PRIORITIES):
            raise JobqError(f"task {name!r}: priority must be one of {', '.join(PRIORITIES)}")

        def decorate(handler: Handler) -> Handler:
            doc = description if description is not None else (handler.__doc__ or "")
            spec = TaskSpec(
                name,
                handler,
                payload_model,
                timeout_seconds,
                max_attempts,
                retry_schedule,
                doc.strip().splitlines()[0] if doc.strip() else "",
                schedule,
                tz,
                queue,
                rate,
                max_concurrency,
                priority,
            )
            with self._lock:
                existing = self._tasks.get(name)
                if existing is not None and existing.handler is not handler:
                    raise JobqError(f"task {name!r} is registered twice")
                self._tasks[name] = spec
            return handler

        return decorate

    def get(self, name: str) -> TaskSpec:
        """The task named `name`, or InvalidInput naming the field."""
        spec = self._tasks.get(name)
        if spec is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise InvalidInput(f"unknown task {name!r}; known tasks: {known}", field="task")
        return spec

    def specs(self) -> list[TaskSpec]:
        """Every registered task, by name."""
        with self._lock:
            return [self._tasks[n] for n in sorted(self._tasks)]

    def names(self) -> list[str]:
        """Registered task names, sorted."""
        return sorted(self._tasks)

    def validate_payload(self, name: str, payload: dict[str, Any]) -> None:
        """Raise InvalidInput (field `payload...`) if the payload does not fit the task's model."""
        spec = self.get(name)
        if spec.payload_model is None:
            return
        try:
            spec.payload_model.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in ("payload", *first["loc"]))
            raise InvalidInput(f"{path}: {first['msg']}", field=path) from exc

    def load_modules(self, modules: list[str]) -> None:
        """Import user task modules so their @task decorators run."""
        self.modules = list(dict.fromkeys([*self.modules, *modules]))
        for module in [*BUILTIN_MODULES, *modules]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise JobqError(
                    f"cannot import task module {module!r} (JOBQ_TASK_MODULES; is it on "
                    f"PYTHONPATH?): {exc}"
                ) from exc


def _check_schedule(name: str, schedule: str, tz: str) -> None:
    """Refuse a task whose cron expression or time zone is invalid, when it is declared."""
    from app.schedules.rules import Rule  # the schedules room needs no registry at import

    try:
        Rule.parse(schedule, None, tz)
    except InvalidInput as exc:
        raise JobqError(f"task {name!r}: {exc.message}") from None


REGISTRY = Registry()
task = REGISTRY.register
