"""The jobs service: owns the transaction for every API operation on jobs."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import translate_db_errors
from app.errors import Conflict, InvalidInput, JobqError, NotFound
from app.jobs import commands, store
from app.jobs.models import Job, JobAttempt
from app.jobs.schemas import JobCreate, RedriveRequest
from app.jobs.states import JobStatus
from app.observability import tracing
from app.observability.metrics import JOBS_CREATED
from app.publisher import Publisher
from app.queue import Outgoing
from app.sqs_limits import MAX_DELAY_SECONDS
from app.tasks.registry import Registry
from app.validation import check_payload

log = logging.getLogger("jobq.jobs")


def request_hash(req: JobCreate) -> str:
    """A fingerprint of what was asked, to tell an idempotent replay from a conflicting reuse."""
    canonical = req.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


class JobService:
    """Submit, read, list, cancel, retry and redrive jobs."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: Registry,
        publisher: Publisher,
        settings: Settings,
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._publisher = publisher
        self._settings = settings

    # -- submit ---------------------------------------------------------------------------

    def row_for(self, req: JobCreate, *, trace_id: str | None, key: str | None) -> dict[str, Any]:
        """Validate one request and build its row (raises InvalidInput naming the field)."""
        spec = self._registry.get(req.task)
        check_payload(req.payload, max_depth=self._settings.max_payload_depth)
        self._registry.validate_payload(req.task, req.payload)
        if req.max_attempts is not None and req.max_attempts > self._settings.max_attempts:
            raise InvalidInput(
                f"max_attempts may not exceed the queue's maxReceiveCount "
                f"({self._settings.max_attempts})",
                field="max_attempts",
            )
        if req.delay_seconds is not None and req.run_at is not None:
            raise InvalidInput("give delay_seconds or run_at, not both", field="run_at")
        now = datetime.now(UTC)
        run_at = req.run_at
        if req.delay_seconds:
            run_at = now + timedelta(seconds=req.delay_seconds)
        far = run_at is not None and (run_at - now).total_seconds() > MAX_DELAY_SECONDS
        row: dict[str, Any] = {
            "id": uuid.uuid4(),
            "task": req.task,
            # Beyond SQS's 15-minute delay the job waits in PostgreSQL until the dispatcher
            # publishes it.
            "status": (JobStatus.SCHEDULED if far else JobStatus.QUEUED).value,
            "payload": req.payload,
            "max_attempts": req.max_attempts or self._settings.max_attempts,
            "timeout_seconds": req.timeout_seconds or spec.timeout_seconds,
            "trace_id": trace_id,
            "priority": req.priority,
            "run_at": run_at if run_at is not None and run_at > now else None,
        }
        if key is not None:
            row.update(
                idempotency_key=key,
                request_hash=request_hash(req),
                idempotency_expires_at=now + timedelta(seconds=self._settings.idempotency_ttl),
            )
        return row

    def submit(
        self, req: JobCreate, *, trace_id: str | None = None, header_key: str | None = None
    ) -> tuple[Job, bool]:
        """Commit the job (or find its idempotent original), then publish; (job, created)."""
        key = _key(header_key, req.idempotency_key)
        row = self.row_for(req, trace_id=trace_id, key=key)
        with (
            tracing.span("jobq.submit", trace_id, task=req.task, job_id=row["id"]),
            translate_db_errors(),
            self._sessions.begin() as session,
        ):
            job, created = self._insert_one(session, row)
        if created:
            self._publish([job])
        return job, created

    def _insert_one(self, session: Session, row: dict[str, Any]) -> tuple[Job, bool]:
        if row.get("idempotency_key") is None:
            return store.insert_jobs(session, [row])[0], True
        job, created = store.insert_idempotent(session, row)
        if not created and job.request_hash != row["request_hash"]:
            raise Conflict(
                "idempotency key already used for a different request",
                field="idempotency_key",
                job_id=str(job.id),
            )
        return job, created

    def submit_batch(
        self, reqs: list[JobCreate], *, atomic: bool, trace_id: str | None = None
    ) -> list[tuple[Job | None, bool, JobqError | None]]:
        """Validate every item, insert the valid ones in one transaction, then publish them.

        With `atomic`, any invalid item rejects the whole batch (InvalidInput per item).
        """
        if len(reqs) > self._settings.batch_max_jobs:
            raise InvalidInput(
                f"at most {self._settings.batch_max_jobs} jobs per batch", field="jobs"
            )
        rows: list[dict[str, Any] | JobqError] = []
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
        results: list[tuple[Job | None, bool, JobqError | None]] = []
        with translate_db_errors(), self._sessions.begin() as session:
            plain = [r for r in rows if isinstance(r, dict) and not r.get("idempotency_key")]
            inserted = {j.id: j for j in store.insert_jobs(session, plain)}
            for r in rows:
                if isinstance(r, JobqError):
                    results.append((None, False, r))
                elif r["id"] in inserted:
                    results.append((inserted[r["id"]], True, None))
                else:
                    try:
                        job, created = self._insert_one(session, r)
                        results.append((job, created, None))
                    except Conflict as exc:
                        if atomic:
                            raise
                        results.append((None, False, exc))
        self._publish([job for job, created, _ in results if job is not None and created])
        return results

    def _publish(self, jobs: list[Job], *, created: bool = True) -> None:
        """After commit only: a message must never name a job that does not exist."""
        for job in jobs:
            if created:
                JOBS_CREATED.labels(job.task).inc()
                log.info("job submitted", extra={"job_id": str(job.id), "task": job.task})
            if job.status == JobStatus.QUEUED.value:
                delay = 0
                if job.run_at is not None:
                    delay = max(0, int((job.run_at - datetime.now(UTC)).total_seconds() + 0.999))
                self._publisher.publish(
                    Outgoing(job.id, job.trace_id, min(delay, MAX_DELAY_SECONDS), job.priority)
                )

    # -- read -------------------------------------------------------------------------------

    def get(self, job_id: uuid.UUID) -> Job:
        """The job, or NotFound."""
        with translate_db_errors(), self._sessions() as session:
            job = store.get_job(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", field="id")
        return job

    def attempts(self, job_id: uuid.UUID) -> list[JobAttempt]:
        """The attempt history of an existing job."""
        with translate_db_errors(), self._sessions() as session:
            if store.get_job(session, job_id) is None:
                raise NotFound(f"job {job_id} not found", field="id")
            return store.list_attempts(session, job_id)

    def find(self, *, limit: int = 50, **filters: Any) -> tuple[list[Job], str | None]:
        """A newest-first page of jobs and the cursor of the next page."""
        after, before = filters.get("created_after"), filters.get("created_before")
        if after is not None and before is not None and after >= before:
            raise InvalidInput("created_after must be before created_before", field="created_after")
        defaults = {"status": None, "task": None, "cursor": None}
        with translate_db_errors(), self._sessions() as session:
            return store.list_jobs(session, limit=limit, **{**defaults, **filters})

    # -- operations -------------------------------------------------------------------------

    def cancel(self, job_id: uuid.UUID) -> Job:
        """Cancel now if not started; request cancellation if running; 409 if finished."""
        with translate_db_errors(), self._sessions.begin() as session:
            job = commands.cancel(session, job_id)
            if job is None:
                self._explain_refusal(session, job_id, "cancel")
        assert job is not None
        return job

    def retry(self, job_id: uuid.UUID) -> Job:
        """Re-enqueue a failed or cancelled job as a new attempt series (history kept)."""
        with translate_db_errors(), self._sessions.begin() as session:
            jobs = commands.requeue(session, ids=[job_id])
            if not jobs:
                self._explain_refusal(session, job_id, "retry")
        self._publish(jobs, created=False)
        return jobs[0]

    def redrive(self, req: RedriveRequest) -> list[Job]:
        """Re-enqueue failed jobs in bulk by filter; return them."""
        if req.failed_after and req.failed_before and req.failed_after >= req.failed_before:
            raise InvalidInput("failed_after must be before failed_before", field="failed_after")
        with translate_db_errors(), self._sessions.begin() as session:
            jobs = commands.requeue(
                session,
                task=req.task,
                failed_after=req.failed_after,
                failed_before=req.failed_before,
                dead_lettered_only=req.dead_lettered_only,
                limit=req.limit,
            )
        self._publish(jobs, created=False)
        return jobs

    @staticmethod
    def _explain_refusal(session: Session, job_id: uuid.UUID, action: str) -> None:
        job = store.get_job(session, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found", field="id")
        raise Conflict(f"cannot {action} a job that is {job.status}", field="status")


def _key(header: str | None, body: str | None) -> str | None:
    if header is not None and not 1 <= len(header) <= 255:
        raise InvalidInput("Idempotency-Key must be 1..255 characters", field="Idempotency-Key")
    if header and body and header != body:
        raise InvalidInput(
            "Idempotency-Key header and idempotency_key differ", field="idempotency_key"
        )
    return header or body
