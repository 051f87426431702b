"""Client and AsyncClient: the jobq HTTP API from Python, with one surface for both.

    from jobq import Client

    with Client() as jobs:                      # JOBQ_API_URL, JOBQ_API_KEY
        job = jobs.submit("echo", {"hello": "world"})
        done = jobs.wait(job.id, timeout=60)    # long poll: one request per 30 s at most

Both classes drive the same operations (jobq._core); only the transport differs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Mapping
from typing import Any, TypeVar, Unpack

import httpx

from jobq import _core as core
from jobq._core import Call, ClientOptions, Config, Done, JobRef, Op, Outcome, Sleep, advance
from jobq.flow import Flow, FlowRun
from jobq.models import (
    Attempt,
    BatchResult,
    Control,
    CronSchedule,
    Job,
    JobRequest,
    ListFilters,
    ScheduleChanges,
    ScheduleOptions,
    SubmitOptions,
    Workflow,
)

T = TypeVar("T")
Attempts = list[Attempt]  # an alias: inside the classes `list` is the method
Schedules = list[CronSchedule]
WorkflowRef = uuid.UUID | str
Controls = list[Control]
JobItems = Iterable[JobRequest | Mapping[str, Any]]
UNSET: Any = object()  # set_limits(): leave this limit as it is


class _Surface:
    """Configuration and the operations both clients run."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.config = Config.resolve(base_url, api_key, **options)

    @property
    def base_url(self) -> str:
        """The API's URL, without a trailing slash."""
        return self.config.base_url

    def _submit(self, task: str, payload: Mapping[str, Any] | None, options: Any) -> Op[Job]:
        req = core.job_request(
            {"task": task, "payload": {} if payload is None else payload, **options}
        )
        return core.submit(self.config, req)

    def _submit_many(self, jobs: JobItems, atomic: bool) -> Op[BatchResult]:
        reqs = [core.job_request(j, f"jobs.{i}.") for i, j in enumerate(jobs)]
        return core.submit_many(self.config, reqs, atomic=atomic)

    def _list(self, page_size: int, filters: ListFilters) -> Op[None]:
        return core.list_jobs(self.config, filters, page_size=page_size)

    def _create_schedule(self, name: str, task: str, options: Any) -> Op[CronSchedule]:
        body = {"name": name, "task": task, **options}
        return core.schedule(self.config, core.schedule_call("POST", body=body))

    def _update_schedule(self, name: str, changes: Any) -> Op[CronSchedule]:
        return core.schedule(self.config, core.schedule_call("PATCH", name, dict(changes)))

    def _control(
        self,
        task: str | None,
        queue: str | None,
        suffix: str,
        method: str = "POST",
        body: Any = None,
    ) -> Op[Control]:
        return core.control(self.config, core.control_path(task, queue, suffix), method, body)

    @staticmethod
    def _limits(max_concurrency: Any, rate_limit: Any) -> dict[str, Any]:
        # UNSET leaves a limit as it is; None clears it (the code's declaration applies again).
        pairs = {"max_concurrency": max_concurrency, "rate_limit": rate_limit}
        return {k: v for k, v in pairs.items() if v is not UNSET}


class Client(_Surface):
    """The jobq API over a blocking httpx.Client.

    `base_url` and `api_key` default to JOBQ_API_URL and JOBQ_API_KEY. Requests refused with
    429 or 503, and connection failures, are retried up to `max_retries` times, waiting what
    Retry-After says or an exponential, jittered backoff (`backoff` doubling up to
    `max_backoff`); a Retry-After beyond `max_retry_after` is raised at once. `transport` is
    handed to httpx (proxies, test transports).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.Client(transport=transport, **self.config.httpx_options())

    def submit(
        self, task: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Job:
        """Submit one job (POST /jobs); safe to retry, see SubmitOptions."""
        return self._run(self._submit(task, payload, options))

    def submit_many(self, jobs: JobItems, *, atomic: bool = False) -> BatchResult:
        """Submit many jobs in one request (POST /jobs/batch); per-item results."""
        return self._run(self._submit_many(jobs, atomic))

    def get(self, job: JobRef) -> Job:
        """The job as it is now."""
        return self._run(core.get(self.config, job))

    def attempts(self, job: JobRef) -> Attempts:
        """Every finished attempt of the job, oldest first."""
        return self._run(core.attempts(self.config, job))

    def cancel(self, job: JobRef) -> Job:
        """Cancel a job not yet running, or ask a running one to stop (Conflict if final)."""
        return self._run(core.action(self.config, job, "cancel"))

    def retry(self, job: JobRef) -> Job:
        """Run a failed or cancelled job again (Conflict otherwise)."""
        return self._run(core.action(self.config, job, "retry"))

    def wait(self, job: JobRef, timeout: float | None = None) -> Job:
        """The job once final (long polls, not a busy loop); WaitTimeout after `timeout` s."""
        return self._run(core.wait(self.config, job, timeout))

    def tasks(self) -> list[dict[str, Any]]:
        """GET /tasks: the task catalogue (name, payload_schema, live, defaults, versions)."""
        return self._run(core.tasks(self.config))

    def list(self, *, page_size: int = 100, **filters: Unpack[ListFilters]) -> Iterator[Job]:
        """Jobs newest first, fetched `page_size` at a time as the iteration goes."""
        return self._drive(self._list(page_size, filters))

    def stats(self) -> dict[str, Any]:
        """GET /stats: counts by status, queue depths, throughput, recent failures."""
        return self._run(core.stats(self.config))

    def submit_flow(self, flow: Flow) -> FlowRun:
        """Submit a chain() / group() flow under a new workflow id (see jobq.flow)."""
        return self._run(core.submit_flow(self.config, flow))

    def workflow(self, workflow_id: WorkflowRef) -> Workflow:
        """A workflow's jobs, edges and overall status (GET /workflows/{id})."""
        return self._run(core.workflow(self.config, workflow_id))

    def cancel_workflow(self, workflow_id: WorkflowRef) -> Workflow:
        """Cancel every unfinished job of a workflow (running ones are asked to stop)."""
        return self._run(core.workflow(self.config, workflow_id, cancel=True))

    def create_schedule(
        self, name: str, task: str, **options: Unpack[ScheduleOptions]
    ) -> CronSchedule:
        """A new schedule (cron= or interval_seconds=; Conflict if the name is taken)."""
        return self._run(self._create_schedule(name, task, options))

    def schedules(self) -> Schedules:
        """Every schedule, by name."""
        return self._run(core.schedules(self.config))

    def schedule(self, name: str) -> CronSchedule:
        """One schedule by name or id, with its next and last run."""
        return self._run(core.schedule(self.config, core.schedule_call("GET", name)))

    def update_schedule(self, name: str, **changes: Unpack[ScheduleChanges]) -> CronSchedule:
        """Change a schedule (e.g. enabled=False pauses it)."""
        return self._run(self._update_schedule(name, changes))

    def run_schedule(self, name: str) -> uuid.UUID:
        """Submit the schedule's job now, outside its rule (its next run does not move)."""
        return self._run(core.run_schedule(self.config, name))

    def delete_schedule(self, name: str) -> None:
        """Delete a schedule (its jobs stay)."""
        self._run(core.delete_schedule(self.config, name))

    def pause(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """Pause a task or a named queue: workers leave its jobs queued until resume()."""
        return self._run(self._control(task, queue, "/pause"))

    def resume(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """Resume a paused task or queue (workers pick its jobs up within seconds)."""
        return self._run(self._control(task, queue, "/resume"))

    def controls(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """The pause and limits of a task or queue."""
        return self._run(self._control(task, queue, "/controls", "GET"))

    def list_controls(self) -> Controls:
        """Every task and queue with a pause or a limit."""
        return self._run(core.list_controls(self.config))

    def set_limits(
        self, task: str, *, max_concurrency: Any = UNSET, rate_limit: Any = UNSET
    ) -> Control:
        """Set (or, with None, clear) a task's run-time limits, e.g. rate_limit="100/minute"."""
        body = self._limits(max_concurrency, rate_limit)
        return self._run(self._control(task, None, "/controls", "PATCH", body))

    def _send(self, call: Call) -> Outcome:
        try:
            return self._http.request(call.method, call.path, **call.request_options())
        except httpx.TransportError as exc:
            return exc

    def _drive(self, op: Op[T]) -> Generator[Any, None, T]:
        outcome: Outcome = None
        while not isinstance(step := advance(op, outcome), Done):
            outcome = None
            if isinstance(step, Call):
                outcome = self._send(step)
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)  # backoff between retries, or a long-poll pause
            else:
                yield from step.items
        value: T = step.value
        return value

    def _run(self, op: Op[T]) -> T:
        return core.result(self._drive(op))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Surface):
    """The same surface as Client, for asyncio: every method is a coroutine, and list()
    is an async iterator (`async for job in client.list(...)`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._http = httpx.AsyncClient(transport=transport, **self.config.httpx_options())

    async def submit(
        self, task: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Job:
        """Submit one job (POST /jobs); safe to retry, see SubmitOptions."""
        return await self._run(self._submit(task, payload, options))

    async def submit_many(self, jobs: JobItems, *, atomic: bool = False) -> BatchResult:
        """Submit many jobs in one request (POST /jobs/batch); per-item results."""
        return await self._run(self._submit_many(jobs, atomic))

    async def get(self, job: JobRef) -> Job:
        """The job as it is now."""
        return await self._run(core.get(self.config, job))

    async def attempts(self, job: JobRef) -> Attempts:
        """Every finished attempt of the job, oldest first."""
        return await self._run(core.attempts(self.config, job))

    async def cancel(self, job: JobRef) -> Job:
        """Cancel a job not yet running, or ask a running one to stop (Conflict if final)."""
        return await self._run(core.action(self.config, job, "cancel"))

    async def retry(self, job: JobRef) -> Job:
        """Run a failed or cancelled job again (Conflict otherwise)."""
        return await self._run(core.action(self.config, job, "retry"))

    async def wait(self, job: JobRef, timeout: float | None = None) -> Job:
        """The job once final (long polls, not a busy loop); WaitTimeout after `timeout` s."""
        return await self._run(core.wait(self.config, job, timeout))

    async def tasks(self) -> list[dict[str, Any]]:
        """GET /tasks: the task catalogue (name, payload_schema, live, defaults, versions)."""
        return await self._run(core.tasks(self.config))

    def list(self, *, page_size: int = 100, **filters: Unpack[ListFilters]) -> AsyncIterator[Job]:
        """Jobs newest first, fetched `page_size` at a time as the iteration goes."""
        return self._iterate(self._list(page_size, filters))

    async def submit_flow(self, flow: Flow) -> FlowRun:
        """Submit a chain() / group() flow under a new workflow id (see jobq.flow)."""
        return await self._run(core.submit_flow(self.config, flow))

    async def workflow(self, workflow_id: WorkflowRef) -> Workflow:
        """A workflow's jobs, edges and overall status (GET /workflows/{id})."""
        return await self._run(core.workflow(self.config, workflow_id))

    async def cancel_workflow(self, workflow_id: WorkflowRef) -> Workflow:
        """Cancel every unfinished job of a workflow (running ones are asked to stop)."""
        return await self._run(core.workflow(self.config, workflow_id, cancel=True))

    async def create_schedule(
        self, name: str, task: str, **options: Unpack[ScheduleOptions]
    ) -> CronSchedule:
        """A new schedule (cron= or interval_seconds=; Conflict if the name is taken)."""
        return await self._run(self._create_schedule(name, task, options))

    async def schedules(self) -> Schedules:
        """Every schedule, by name."""
        return await self._run(core.schedules(self.config))

    async def schedule(self, name: str) -> CronSchedule:
        """One schedule by name or id, with its next and last run."""
        return await self._run(core.schedule(self.config, core.schedule_call("GET", name)))

    async def update_schedule(self, name: str, **changes: Unpack[ScheduleChanges]) -> CronSchedule:
        """Change a schedule (e.g. enabled=False pauses it)."""
        return await self._run(self._update_schedule(name, changes))

    async def run_schedule(self, name: str) -> uuid.UUID:
        """Submit the schedule's job now, outside its rule (its next run does not move)."""
        return await self._run(core.run_schedule(self.config, name))

    async def delete_schedule(self, name: str) -> None:
        """Delete a schedule (its jobs stay)."""
        await self._run(core.delete_schedule(self.config, name))

    async def stats(self) -> dict[str, Any]:
        """GET /stats: counts by status, queue depths, throughput, recent failures."""
        return await self._run(core.stats(self.config))

    async def pause(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """Pause a task or a named queue: workers leave its jobs queued until resume()."""
        return await self._run(self._control(task, queue, "/pause"))

    async def resume(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """Resume a paused task or queue (workers pick its jobs up within seconds)."""
        return await self._run(self._control(task, queue, "/resume"))

    async def controls(self, *, task: str | None = None, queue: str | None = None) -> Control:
        """The pause and limits of a task or queue."""
        return await self._run(self._control(task, queue, "/controls", "GET"))

    async def list_controls(self) -> Controls:
        """Every task and queue with a pause or a limit."""
        return await self._run(core.list_controls(self.config))

    async def set_limits(
        self, task: str, *, max_concurrency: Any = UNSET, rate_limit: Any = UNSET
    ) -> Control:
        """Set (or, with None, clear) a task's run-time limits, e.g. rate_limit="100/minute"."""
        body = self._limits(max_concurrency, rate_limit)
        return await self._run(self._control(task, None, "/controls", "PATCH", body))

    async def _send(self, call: Call) -> Outcome:
        try:
            return await self._http.request(call.method, call.path, **call.request_options())
        except httpx.TransportError as exc:
            return exc

    async def _iterate(self, op: Op[Any]) -> AsyncIterator[Any]:
        outcome: Outcome = None
        while not isinstance(step := advance(op, outcome), Done):
            outcome = None
            if isinstance(step, Call):
                outcome = await self._send(step)
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            else:
                for item in step.items:
                    yield item

    async def _run(self, op: Op[T]) -> T:
        # The operation's return value, seen from the inside: an async generator cannot
        # return one, so the last step is caught here.
        box: list[T] = []

        def keep() -> Generator[Any, Any, None]:
            box.append((yield from op))

        async for _ in self._iterate(keep()):
            pass
        return box[0]

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
