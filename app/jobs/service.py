"""The jobs service: owns the transaction for every API operation on jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.catalogue.cache import Catalogue
from app.config import Settings
from app.db import HeldConnections, translate_db_errors
from app.errors import Conflict, InvalidInput, JobqError, NotFound
from app.jobs import bulk, queries, transitions, views, workflows
from app.jobs.filters import JobFilter
from app.jobs.models import Job
from app.jobs.notify import FinalListener, listen_connection
from app.jobs.rows import build_row
from app.jobs.schemas import AttemptOut, JobCreate, JobOut, RedriveRequest
from app.jobs.states import FINAL, JobStatus
from app.observability import otel
from app.observability.metrics import JOBS_CREATED
from app.outbox.group_commit import GroupCommit, Row
from app.outbox.publisher import Publisher
from app.sqs.limits import MAX_DELAY_SECONDS
from app.sqs.queue import Outgoing

log = logging.getLogger("jobq.jobs")
# The longest GET /jobs/{id}?wait=N may hold a request (seconds): short enough for proxies'
# idle timeouts, long enough that a waiting client makes few requests.
MAX_WAIT_SECONDS = 30.0


def created_view(row: Row, created_at: datetime, updated_at: datetime) -> JobOut:
    """A just-inserted job as the API shows it, from its row and the timestamps PostgreSQL set
    (no read back: everything else is what was written)."""
    return JobOut.model_validate(
        {
            **row,
            "result": None,
            "error": None,
            "attempts": 0,
            "created_at": created_at,
            "updated_at": updated_at,
            "started_at": None,
            "finished_at": None,
            "cancel_requested_at": None,
            "dead_lettered_at": None,
        }
    )


def _views(rows: list[Row], stamps: Sequence[Any]) -> list[JobOut]:
    return [
        created_view(row, stamp.created_at, stamp.updated_at)
        for row, stamp in zip(rows, stamps, strict=True)
    ]


class JobService:
    """Submit, read, list, cancel, retry and redrive jobs."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalogue: Catalogue,
        publisher: Publisher,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self.catalogue = catalogue
        self._publisher = publisher
        self._settings = settings
        self._list_caps = views.Caps.for_lists(settings)
        self._one_caps = views.Caps.for_one_job(settings)
        # The committing threads keep a connection each: no checkout, pre-ping or Session per
        # batch (see HeldConnections for what happens when PostgreSQL restarts).
        self._held = HeldConnections(sessions.kw["bind"])
        self._group = GroupCommit(
            self._insert_grouped,
            self._announce,
            threads=settings.submit_commit_threads,
            max_rows=settings.batch_max_jobs,
        )
        engine = sessions.kw["bind"]
        self._insert_page = engine.dialect.insertmanyvalues_page_size
        self._finals = FinalListener(lambda: listen_connection(engine))

    def close(self) -> None:
        """Commit (and hand to the publisher) every submission still waiting; end long polls."""
        self._group.close()
        self._held.close()
        self._finals.close()

    # -- submit ---------------------------------------------------------------------------

    def row_for(self, req: JobCreate, *, trace_id: str | None, key: str | None) -> Row:
        """Validate one request and build its row (raises InvalidInput naming the field)."""
        return build_row(self.catalogue, self._settings, req, trace_id=trace_id, key=key)

    async def submit_async(
        self, req: JobCreate, *, trace_id: str | None = None, header_key: str | None = None
    ) -> tuple[JobOut, bool]:
        """submit() for the event loop: plain rows are committed together with concurrent
        submissions (GroupCommit); keyed, unique and workflow ones in a worker thread."""
        key = _key(header_key, req.idempotency_key)
        row = self.row_for(req, trace_id=trace_id, key=key)
        with otel.span("jobq.submit", trace_id, task=req.task, job_id=row["id"]):
            if not _guarded(row):
                return await self._group.submit(row), True
            return await anyio.to_thread.run_sync(self._submit_keyed, row)

    def _insert_grouped(self, rows: list[Row]) -> list[JobOut]:
        """Insert rows without idempotency keys on the calling committer thread's held
        connection, in one statement and one commit; their API views, in order."""
        # Up to a page of insertmanyvalues the INSERT is one statement: no BEGIN/COMMIT trips.
        one = len(rows) <= self._insert_page
        return _views(
            rows, self._held.run(lambda conn: queries.insert_jobs(conn, rows), atomic=not one)
        )

    def _submit_keyed(self, row: Row) -> tuple[JobOut, bool]:
        ready: list[transitions.Ready] = []
        with translate_db_errors(), self._sessions.begin() as session:
            job, created = self._insert_keyed(session, row, ready)
            view = JobOut.model_validate(job)
        if created:
            self._announce([row])
        self._publish(ready)
        return view, created

    def _insert_keyed(
        self, session: Session, row: Row, ready: list[transitions.Ready]
    ) -> tuple[Job, bool]:
        """Insert a job with an idempotency key, a unique key or parents (one transaction);
        (job, created): not created when a live job holds the key."""
        parents = row.pop("_parents", None)
        locked = workflows.prepare_child(session, row, parents) if parents else []
        job, holder = queries.insert_guarded(session, row)
        if holder == "idempotency_key" and job.request_hash != row["request_hash"]:
            raise Conflict(
                "idempotency key already used for a different request",
                field="idempotency_key",
                job_id=str(job.id),
            )
        if holder is None and locked:
            ready.extend(workflows.attach_child(session, row, locked))
            session.refresh(job)
        return job, holder is None

    def submit_batch(
        self, reqs: list[JobCreate], *, atomic: bool, trace_id: str | None = None
    ) -> list[tuple[JobOut | None, bool, JobqError | None]]:
        """Validate every item, insert the valid ones in one transaction, then publish them.

        With `atomic`, any invalid item rejects the whole batch (InvalidInput per item).
        """
        if len(reqs) > self._settings.batch_max_jobs:
            raise InvalidInput(
                f"at most {self._settings.batch_max_jobs} jobs per batch", field="jobs"
            )
        rows: list[Row | JobqError] = []
        for index, req in enumerate(reqs):
            try:
                rows.append(self.row_for(req, trace_id=trace_id, key=req.idempotency_key))
            except JobqError as exc:
                exc.field = f"jobs.{index}.{exc.field}" if exc.field else f"jobs.{index}"
                rows.append(exc)
        errors = [r for r in rows if isinstance(r, JobqError)]
        if atomic and errors:
            raise InvalidInput(
                f"{len(errors)} invalid job(s); nothing was submitted (atomic): "
                + "; ".join(f"{e.field}: {e.message}" for e in errors[:5]),
                field=errors[0].field,
            )
        results: list[tuple[JobOut | None, bool, JobqError | None]] = []
        created_rows: list[Row] = []
        ready: list[transitions.Ready] = []
        with translate_db_errors(), self._sessions.begin() as session:
            plain = [r for r in rows if isinstance(r, dict) and not _guarded(r)]
            stamps = {s.id: s for s in queries.insert_jobs(session, plain)}
            created_rows.extend(plain)
            for r in rows:
                if isinstance(r, JobqError):
                    results.append((None, False, r))
                elif (stamp := stamps.get(r["id"])) is not None:
                    view = created_view(r, stamp.created_at, stamp.updated_at)
                    results.append((view, True, None))
                else:
                    try:
                        # A savepoint: a refused item must not undo its batch-mates.
                        with session.begin_nested():
                            job, created = self._insert_keyed(session, r, ready)
                    except (Conflict, InvalidInput) as exc:
                        if atomic:
                            raise
                        results.append((None, False, exc))
                        continue
                    results.append((JobOut.model_validate(job), created, None))
                    if created:
                        created_rows.append(r)
        self._announce(created_rows)
        self._publish(ready)
        return results

    def _announce(self, rows: list[Row]) -> None:
        """After commit only: count, log and publish new jobs (a message must never name a
        job that does not exist)."""
        for task, n in Counter(r["task"] for r in rows).items():
            JOBS_CREATED.labels(task).inc(n)
        verbose = log.isEnabledFor(logging.INFO)
        for r in rows:
            if verbose:
                # Explicit trace id: this may run on a GroupCommit thread, outside the request.
                extra = {"job_id": str(r["id"]), "task": r["task"], "trace_id": r["trace_id"]}
                log.info("job submitted", extra=extra)
            if r["status"] == JobStatus.QUEUED.value:
                out = _outgoing(r["id"], r["trace_id"], r["run_at"], r["priority"], r["queue"])
                self._publisher.publish(out)

    def _publish(self, jobs: Sequence[Any]) -> None:
        """Publish re-enqueued jobs, after their commit."""
        for job in jobs:
            if job.status == JobStatus.QUEUED.value:
                self._publisher.publish(
                    _outgoing(job.id, job.trace_id, job.run_at, job.priority, job.queue)
                )

    # -- read -------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID, *, max_chars: int | None = None) -> JobOut:
        """The job (a field beyond every accepted size cut: views.Caps.for_one_job; beyond
        `max_chars` if given, for a page), or NotFound."""
        caps = self._one_caps if max_chars is None else views.Caps(max_chars, max_chars, max_chars)
        with translate_db_errors(), self._sessions() as session:
            job = views.one_job(session, job_id, caps)
        if job is None:
            raise NotFound(f"job {job_id} not found", field="id")
        return job

    async def get_async(self, job_id: uuid.UUID) -> JobOut:
        """get() for the event loop (the read runs in a worker thread)."""
        return await anyio.to_thread.run_sync(self.get, job_id)

    async def wait_final(self, job_id: uuid.UUID, seconds: float) -> JobOut:
        """The job as soon as it is final, or as it is after `seconds`.

        Woken by the final-status NOTIFY (app/jobs/notify.py), never by re-reading the table:
        a wait costs one read, plus one per wake-up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            # Registered before the read: a job ending between the read and the await still
            # resolves this future.
            with self._finals.watch(job_id) as ended:
                job = await self.get_async(job_id)
                remaining = deadline - loop.time()
                if job.status in FINAL or remaining <= 0 or self._finals.closed:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended, remaining)

    def attempts(
        self, job_id: uuid.UUID, *, newest: int | None = None, traceback_chars: int | None = None
    ) -> Sequence[AttemptOut]:
        """The attempt history of an existing job (only the `newest` if given)."""
        with translate_db_errors(), self._sessions() as session:
            # queries.view reads a few columns: never a job's (possibly large) result.
            if queries.view(session, job_id) is None:
                raise NotFound(f"job {job_id} not found", field="id")
            chars = self._one_caps.error_chars
            return views.attempts(
                session, job_id, chars, newest=newest, traceback_chars=traceback_chars
            )

    def find(self, *, limit: int = 50, **filters: Any) -> tuple[list[JobOut], str | None]:
        """A newest-first page of jobs (large fields cut: views.Caps.for_lists) and the
        cursor of the next page."""
        after, before = filters.get("created_after"), filters.get("created_before")
        if after is not None and before is not None and after >= before:
            raise InvalidInput("created_after must be before created_before", field="created_after")
        defaults = {"status": None, "task": None, "cursor": None}
        with translate_db_errors(), self._sessions() as session:
            return views.list_page(session, self._list_caps, limit=limit, **{**defaults, **filters})

    def search(
        self, search: JobFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[JobOut], str | None]:
        """find() for a dashboard search (every JobFilter field)."""
        with translate_db_errors(), self._sessions() as session:
            return views.search_page(session, self._list_caps, search, limit=limit, cursor=cursor)

    def count(self, search: JobFilter, *, up_to: int, action: str | None = None) -> int:
        """Jobs matching `search` (those `action` applies to, if given), counted up to `up_to`."""
        with translate_db_errors(), self._sessions() as session:
            if action is None:
                return views.count_matching(session, search, up_to=up_to)
            return bulk.count(session, action, search, up_to=up_to)

    def bulk(self, action: str, search: JobFilter, *, actor: str, limit: int) -> bulk.BulkResult:
        """Retry, cancel or redrive up to `limit` jobs matching `search` (audited)."""
        return bulk.run(self._sessions, self._publish, action, search, actor=actor, limit=limit)

    def run_now(self, job_id: uuid.UUID) -> None:
        """Make a scheduled job due now (the dispatcher sends it on its next pass)."""
        with translate_db_errors(), self._sessions.begin() as session:
            if not queries.make_due(session, job_id):
                self._explain_refusal(session, job_id, "run now")

    # -- operations -------------------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID) -> Job:
        """Cancel now if not started; request cancellation if running; 409 if finished."""
        ready: list[transitions.Ready] = []
        with translate_db_errors(), self._sessions.begin() as session:
            job = transitions.cancel(session, job_id)
            if job is None:
                self._explain_refusal(session, job_id, "cancel")
            assert job is not None
            if job.workflow_id is not None and job.status == JobStatus.CANCELLED.value:
                # Its waiting children follow their on_parent_failure policy now.
                ready = transitions.settle_children(session, [job_id])
        self._publish(ready)
        return job

    # -- workflows --------------------------------------------------------------------------

    def workflow(self, workflow_id: uuid.UUID) -> workflows.WorkflowOut:
        """A workflow's jobs, edges and state, or NotFound."""
        with translate_db_errors(), self._sessions() as session:
            found = workflows.view(session, workflow_id, self._list_caps)
        if found is None:
            raise NotFound(f"workflow {workflow_id} not found", field="id")
        return found

    def cancel_workflow(self, workflow_id: uuid.UUID) -> workflows.WorkflowOut:
        """Cancel every unfinished job of a workflow (running ones are asked to stop)."""
        ready: list[transitions.Ready] = []
        with translate_db_errors(), self._sessions.begin() as session:
            cancelled, _ = transitions.cancel_workflow(session, workflow_id)
            ready = transitions.settle_children(session, cancelled)
        self._publish(ready)
        return self.workflow(workflow_id)

    def retry(self, job_id: uuid.UUID) -> JobOut:
        """Re-enqueue a failed or cancelled job as a new attempt series (history kept); send a
        queued or retrying one again, to run now (its message may have been lost)."""
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                jobs = transitions.requeue(session, ids=[job_id]) or transitions.run_now(
                    session, job_id
                )
                if not jobs:
                    self._explain_refusal(session, job_id, "retry")
        except IntegrityError as exc:
            # Unfinished again, it would hold its unique_key while another job holds it.
            raise Conflict(
                "another unfinished job holds this job's unique_key", field="unique_key"
            ) from exc
        self._publish(jobs)
        return self.get(job_id)

    def redrive(self, req: RedriveRequest) -> list[Any]:
        """Re-enqueue failed jobs in bulk by filter; return them."""
        if req.failed_after and req.failed_before and req.failed_after >= req.failed_before:
            raise InvalidInput("failed_after must be before failed_before", field="failed_after")
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                jobs = transitions.requeue(
                    session,
                    task=req.task,
                    failed_after=req.failed_after,
                    failed_before=req.failed_before,
                    dead_lettered_only=req.dead_lettered_only,
                    limit=req.limit,
                )
        except IntegrityError as exc:
            raise Conflict(
                "a failed job's unique_key is held by another unfinished job; redrive the "
                "others by id or narrow the filter",
                field="unique_key",
            ) from exc
        self._publish(jobs)
        return jobs

    @staticmethod
    def _explain_refusal(session: Session, job_id: uuid.UUID, action: str) -> None:
        job = queries.view(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", field="id")
        raise Conflict(
            f"cannot {action} a job that is {job.status}", field="status", job_id=str(job_id)
        )


def _outgoing(
    job_id: uuid.UUID, trace_id: str | None, run_at: datetime | None, priority: str, queue: str
) -> Outgoing:
    delay = 0
    if run_at is not None:
        delay = max(0, int((run_at - datetime.now(UTC)).total_seconds() + 0.999))
    return Outgoing(job_id, trace_id, min(delay, MAX_DELAY_SECONDS), priority, queue)


def _guarded(row: Row) -> bool:
    """Rows that need their own transaction (a key to check, parents to lock), or that have
    columns the others lack (GroupCommit inserts rows with the same keys together)."""
    keys = ("idempotency_key", "unique_key", "_parents", "workflow_id")
    return any(row.get(k) for k in keys)


def _key(header: str | None, body: str | None) -> str | None:
    if header is not None and not 1 <= len(header) <= 255:
        raise InvalidInput("Idempotency-Key must be 1..255 characters", field="Idempotency-Key")
    if header and body and header != body:
        raise InvalidInput(
            "Idempotency-Key header and idempotency_key differ", field="idempotency_key"
        )
    return header or body
