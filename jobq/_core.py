"""The client's one implementation, shared by Client and AsyncClient (no I/O here).

Every operation is a generator that yields steps — `Call` (send this request), `Sleep` (back
off), `Emit` (hand items to an iterator) — and receives each Call's outcome (an
httpx.Response, or the httpx.TransportError that replaced it). Client drives these generators
with httpx.Client and time.sleep, AsyncClient with httpx.AsyncClient and asyncio.sleep; request
building, retries, idempotency keys, response parsing and the long-poll loop exist once.
"""

from __future__ import annotations

import os
import random
import time
import urllib.parse
import uuid
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from jobq.errors import (
    ApiError,
    InvalidInput,
    RateLimited,
    Unavailable,
    Unreachable,
    WaitTimeout,
)
from jobq.errors import error_from_response as _error_from_response
from jobq.flow import Flow, FlowRun
from jobq.models import (
    Attempt,
    BatchResult,
    Control,
    CronSchedule,
    Job,
    JobPage,
    JobRequest,
    ListFilters,
    Workflow,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
# The server holds a GET /jobs/{id}?wait=N for at most this long (app.jobs.service).
MAX_POLL_SECONDS = 30.0
# A long poll answered sooner than this without a final status (a server without long polls,
# or one shutting down) is followed by a pause, so wait() can never spin on the API.
MIN_POLL_INTERVAL = 0.5
# Transport errors raised before the request left this process: always safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_ATTEMPTS = TypeAdapter(list[Attempt])
JobRef = uuid.UUID | str | Job


class ClientOptions(TypedDict, total=False):
    """Keyword options of Client and AsyncClient (the fields of Config)."""

    timeout: float
    max_retries: int
    backoff: float
    max_backoff: float
    max_retry_after: float
    auto_idempotency: bool


@dataclass(frozen=True)
class Config:
    """Where the API is and how hard to try; see Client for each field's meaning."""

    base_url: str
    api_key: str | None
    timeout: float = 10.0
    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    auto_idempotency: bool = True

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, **options: Any) -> Config:
        """Arguments first, then JOBQ_API_URL / JOBQ_API_KEY, then the local default."""
        url = base_url or os.environ.get("JOBQ_API_URL") or DEFAULT_URL
        key = api_key if api_key is not None else os.environ.get("JOBQ_API_KEY") or None
        return cls(base_url=url.rstrip("/"), api_key=key, **options)

    def httpx_options(self) -> dict[str, Any]:
        """Keyword arguments of httpx.Client / httpx.AsyncClient: URL, headers, timeout."""
        headers = {"user-agent": "jobq-python", "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.base_url, "headers": headers, "timeout": self.timeout}

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before retry number `attempt` (0-based); None: do not retry."""
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after else None
        # Full jitter: clients refused together do not come back together.
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))


@dataclass(frozen=True)
class Call:
    """Send one request; `idempotent`: sending it twice has the effect of sending it once."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    timeout: float | None = None
    idempotent: bool = True

    def request_options(self) -> dict[str, Any]:
        """Keyword arguments of httpx's Client.request / AsyncClient.request."""
        options: dict[str, Any] = {"params": self.params, "json": self.json}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options


@dataclass(frozen=True)
class Sleep:
    """Wait this long before the next step."""

    seconds: float


@dataclass(frozen=True)
class Emit:
    """Hand these items to the iterator the operation runs in (list())."""

    items: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Done:
    """The operation finished with `value` (what a driver returns)."""

    value: Any


Step = Call | Sleep | Emit
Outcome = httpx.Response | httpx.TransportError | None
Op = Generator[Step, Outcome, T]


def advance(op: Generator[Any, Any, Any], outcome: Any = None) -> Any:
    """The generator's next step given the outcome of the last one, or Done(its value)."""
    try:
        return op.send(outcome)
    except StopIteration as stop:
        return Done(stop.value)


def result(gen: Generator[Any, None, T]) -> T:
    """Run a generator to its end (ignoring what it yields); what it returned."""
    while not isinstance(step := advance(gen), Done):
        pass
    value: T = step.value
    return value


# -- one request, with retries --------------------------------------------------------------


def _retryable(error: ApiError, outcome: Outcome, call: Call) -> bool:
    if isinstance(error, RateLimited):
        return True  # refused before anything was done
    if isinstance(error, Unreachable):
        return call.idempotent or isinstance(outcome, _NOT_SENT)
    if isinstance(error, Unavailable):
        # jobq's own 503 means PostgreSQL or SQS refused before anything was committed; a
        # proxy's 502/504 may have come after the request was served.
        return call.idempotent or error.status == 503
    return False


def _error(outcome: Outcome, base_url: str) -> ApiError | None:
    if isinstance(outcome, httpx.TransportError):
        kind = type(outcome).__name__
        return Unreachable(f"cannot reach the API at {base_url}: {kind}: {outcome}")
    assert outcome is not None
    if outcome.is_success:
        return None
    try:
        body = outcome.json()
    except ValueError:
        body = None
    return _error_from_response(outcome.status_code, outcome.headers, body)


def request(config: Config, call: Call) -> Op[Any]:
    """Send `call` until it succeeds or may not be retried; its decoded JSON body."""
    attempt = 0
    while True:
        outcome = yield call
        error = _error(outcome, config.base_url)
        if error is None:
            assert isinstance(outcome, httpx.Response)
            if outcome.status_code == 204 or not outcome.content:
                return None
            return outcome.json()
        wait = None
        if attempt < config.max_retries and _retryable(error, outcome, call):
            wait = config.delay(attempt, getattr(error, "retry_after", None))
        if wait is None:
            raise error
        yield Sleep(wait)
        attempt += 1


# -- the operations ---------------------------------------------------------------------------


def new_idempotency_key() -> str:
    """A key no other request will carry (what a retried submit sends again)."""
    return f"jobq-sdk-{uuid.uuid4()}"


def job_request(data: JobRequest | Mapping[str, Any], where: str = "") -> JobRequest:
    """`data` as a JobRequest; InvalidInput naming the field (prefixed `where`) if it is not."""
    if isinstance(data, JobRequest):
        return data
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = where + ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{path}: {first['msg']}", code="invalid_input", field=path) from None


def _keyed(config: Config, req: JobRequest) -> dict[str, Any]:
    auto = config.auto_idempotency and req.idempotency_key is None
    return req.body(key=new_idempotency_key() if auto else None)


def job_path(job: JobRef, suffix: str = "") -> str:
    """/jobs/{id}{suffix} for an id or a Job."""
    ident = str(job.id if isinstance(job, Job) else job)
    return f"/jobs/{urllib.parse.quote(ident, safe='')}{suffix}"


def submit(config: Config, req: JobRequest) -> Op[Job]:
    """POST /jobs."""
    body = _keyed(config, req)
    call = Call("POST", "/jobs", json=body, idempotent="idempotency_key" in body)
    return Job.model_validate((yield from request(config, call)))


def submit_many(config: Config, reqs: Iterable[JobRequest], *, atomic: bool) -> Op[BatchResult]:
    """POST /jobs/batch."""
    items = [_keyed(config, r) for r in reqs]
    keyed = all("idempotency_key" in i for i in items)
    call = Call("POST", "/jobs/batch", json={"jobs": items, "atomic": atomic}, idempotent=keyed)
    return BatchResult.model_validate((yield from request(config, call)))


def get(config: Config, job: JobRef) -> Op[Job]:
    """GET /jobs/{id}."""
    return Job.model_validate((yield from request(config, Call("GET", job_path(job)))))


def attempts(config: Config, job: JobRef) -> Op[list[Attempt]]:
    """GET /jobs/{id}/attempts."""
    data = yield from request(config, Call("GET", job_path(job, "/attempts")))
    return _ATTEMPTS.validate_python(data)


def action(config: Config, job: JobRef, name: str) -> Op[Job]:
    """POST /jobs/{id}/cancel or /retry (not idempotent: a repeat may answer 409)."""
    call = Call("POST", job_path(job, f"/{name}"), idempotent=False)
    return Job.model_validate((yield from request(config, call)))


def stats(config: Config) -> Op[dict[str, Any]]:
    """GET /stats."""
    data: dict[str, Any] = yield from request(config, Call("GET", "/stats"))
    return data


def tasks(config: Config) -> Op[list[dict[str, Any]]]:
    """GET /tasks."""
    data = yield from request(config, Call("GET", "/tasks"))
    found: list[dict[str, Any]] = data["tasks"]
    return found


def _query(filters: ListFilters, page_size: int) -> dict[str, str]:
    params = {"limit": str(page_size)}
    for name, value in filters.items():
        if value is not None:
            params[name] = value.isoformat() if isinstance(value, datetime) else str(value)
    return params


def list_jobs(config: Config, filters: ListFilters, *, page_size: int) -> Op[None]:
    """GET /jobs page after page, following next_cursor; emits the jobs."""
    params = _query(filters, page_size)
    while True:
        page = JobPage.model_validate((yield from request(config, Call("GET", "/jobs", params))))
        yield Emit(list(page.items))
        if not page.next_cursor:
            return
        params["cursor"] = page.next_cursor


def wait(config: Config, job: JobRef, timeout: float | None) -> Op[Job]:
    """Long-poll GET /jobs/{id}?wait=N until the job is final; WaitTimeout after `timeout`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        started = time.monotonic()
        left = MAX_POLL_SECONDS if deadline is None else deadline - started
        poll = max(0.001, min(MAX_POLL_SECONDS, left))
        call = Call(
            "GET", job_path(job), params={"wait": f"{poll:.3f}"}, timeout=poll + config.timeout
        )
        current = Job.model_validate((yield from request(config, call)))
        if current.final:
            return current
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise WaitTimeout(
                f"job {current.id} still {current.status} after {timeout:g} s", job=current
            )
        pause = MIN_POLL_INTERVAL - (now - started)
        if pause > 0:
            yield Sleep(pause if deadline is None else min(pause, deadline - now))


# -- flow control: workflows and schedules ---------------------------------------------------


def submit_flow(config: Config, flow: Flow) -> Op[FlowRun]:
    """Submit a flow stage by stage: each job depends on every job of the stage before, all
    under one new workflow id. Not atomic: a failure part-way leaves the stages submitted so
    far (cancel them with cancel_workflow)."""
    workflow_id = uuid.uuid4()
    stages: list[list[Job]] = []
    for stage in flow.stages:
        parents = [j.id for j in stages[-1]] if stages else None
        jobs: list[Job] = []
        for req in stage:
            update: dict[str, Any] = {"workflow_id": workflow_id}
            if parents:
                update["depends_on"] = [*(req.depends_on or []), *parents]
            jobs.append((yield from submit(config, req.model_copy(update=update))))
        stages.append(jobs)
    return FlowRun(workflow_id=workflow_id, stages=stages)


def _ident(ref: uuid.UUID | str) -> str:
    return urllib.parse.quote(str(ref), safe="")


def workflow(config: Config, workflow_id: uuid.UUID | str, cancel: bool = False) -> Op[Workflow]:
    """GET /workflows/{id}, or POST /workflows/{id}/cancel."""
    path = f"/workflows/{_ident(workflow_id)}"
    call = Call("POST", path + "/cancel") if cancel else Call("GET", path)
    return Workflow.model_validate((yield from request(config, call)))


def schedule_call(method: str, name: str | None = None, body: Any = None) -> Call:
    """A request to /schedules or /schedules/{name}."""
    path = "/schedules" if name is None else f"/schedules/{_ident(name)}"
    # A repeated POST answers 409 (the name exists): not idempotent, never re-sent blindly.
    return Call(method, path, json=body, idempotent=method != "POST")


def schedule(config: Config, call: Call) -> Op[CronSchedule]:
    """One schedule back from POST, GET or PATCH."""
    return CronSchedule.model_validate((yield from request(config, call)))


def schedules(config: Config) -> Op[list[CronSchedule]]:
    """GET /schedules."""
    data = yield from request(config, schedule_call("GET"))
    return [CronSchedule.model_validate(s) for s in data["items"]]


def run_schedule(config: Config, name: str) -> Op[uuid.UUID]:
    """POST /schedules/{name}/run: the id of the job submitted now (not re-sent: a lost
    response would otherwise submit a second run)."""
    call = Call("POST", f"/schedules/{_ident(name)}/run", idempotent=False)
    data = yield from request(config, call)
    return uuid.UUID(data["job_id"])


def delete_schedule(config: Config, name: str) -> Op[None]:
    """DELETE /schedules/{name}."""
    yield from request(config, schedule_call("DELETE", name))


def control_path(task: str | None, queue: str | None, suffix: str) -> str:
    """/tasks/{task}{suffix} or /queues/{queue}{suffix}: exactly one of the two is given."""
    if (task is None) == (queue is None):
        raise TypeError("give exactly one of task= or queue=")
    kind, name = ("tasks", task) if task is not None else ("queues", queue)
    return f"/{kind}/{urllib.parse.quote(str(name), safe='')}{suffix}"


def control(config: Config, path: str, method: str = "GET", body: Any = None) -> Op[Control]:
    """GET/PATCH .../controls, POST .../pause|resume (each repeatable: idempotent)."""
    call = Call(method, path, json=body, idempotent=True)
    return Control.model_validate((yield from request(config, call)))


def list_controls(config: Config) -> Op[list[Control]]:
    """GET /controls."""
    data = yield from request(config, Call("GET", "/controls"))
    return [Control.model_validate(c) for c in data["controls"]]
