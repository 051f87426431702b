"""The jobs service: owns the transaction for every API operation on jobs."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import translate_db_errors
from app.errors import NotFound
from app.jobs import store
from app.jobs.models import Job, JobAttempt
from app.jobs.schemas import JobCreate
from app.jobs.states import JobStatus
from app.publisher import Publisher
from app.queue import Outgoing
from app.tasks.registry import Registry


class JobService:
    """Submit, read and list jobs."""

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

    def submit(self, request: JobCreate, *, trace_id: str | None = None) -> Job:
        """Validate, commit the job as queued, then hand its id to the publisher."""
        self._registry.validate_payload(request.task, request.payload)
        values = {
            "id": uuid.uuid4(),
            "task": request.task,
            "status": JobStatus.QUEUED.value,
            "payload": request.payload,
            "max_attempts": self._settings.max_attempts,
            "timeout_seconds": self._registry.get(request.task).timeout_seconds,
            "trace_id": trace_id,
        }
        with translate_db_errors(), self._sessions.begin() as session:
            job = store.insert_job(session, values)
        # After commit only: a message must never name a job that does not exist.
        self._publisher.publish(Outgoing(job.id, trace_id))
        return job

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

    def list(
        self,
        *,
        status: JobStatus | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A newest-first page of jobs and the cursor of the next page."""
        with translate_db_errors(), self._sessions() as session:
            return store.list_jobs(session, status=status, task=task, limit=limit, cursor=cursor)
