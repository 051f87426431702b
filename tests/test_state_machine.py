"""Property test: no sequence of API operations and worker events moves a job through a
transition the table does not allow (run against the real SQL on PostgreSQL)."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import text

from app.jobs import queries, transitions
from app.jobs.states import FINAL, JobStatus, can_transition
from app.jobs.transitions import Claimed

WORKERS = ("worker-a", "worker-b")


class JobLifecycle(RuleBasedStateMachine):
    """One job; random API calls and worker events; every status change must be allowed."""

    sessions: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.job_id = uuid.uuid4()
        self.claims: dict[str, Claimed] = {}
        self.latest: tuple[str, Claimed] | None = None
        with self.sessions.begin() as s:
            queries.insert_jobs(s, [{"id": self.job_id, "task": "echo", "max_attempts": 3}])
        self.status = JobStatus.QUEUED

    def _apply(self, action: Any) -> None:
        with self.sessions.begin() as s:
            action(s)
            row = s.execute(text("SELECT status FROM jobs WHERE id = :id"), {"id": self.job_id})
            new = JobStatus(row.scalar_one())
        assert new == self.status or can_transition(self.status, new), (self.status, new)
        self.status = new

    @rule(worker=st.sampled_from(WORKERS))
    def claim(self, worker: str) -> None:
        def act(s: Any) -> None:
            got = transitions.claim(s, self.job_id, worker, 30)
            if got is not None:
                self.claims[worker] = got
                self.latest = (worker, got)

        self._apply(act)

    @rule(
        worker=st.sampled_from(WORKERS),
        outcome=st.sampled_from([JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.FAILED]),
    )
    def finish(self, worker: str, outcome: JobStatus) -> None:
        """A worker reports an outcome for the attempt it claimed (perhaps long ago)."""
        claimed = self.claims.get(worker)
        if claimed is None:
            return
        self._apply(
            lambda s: transitions.finish(s, claimed, worker, status=outcome, outcome="x", error="e")
        )

    @rule(outcome=st.sampled_from([JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.FAILED]))
    def holder_finishes(self, outcome: JobStatus) -> None:
        """The worker that claimed last reports (the common case; `finish` covers stale ones)."""
        if self.latest is not None:
            self.finish(self.latest[0], outcome)

    @rule()
    def lease_expires(self) -> None:
        self._apply(
            lambda s: s.execute(
                text("UPDATE jobs SET lease_expires_at = now() - interval '1 s' WHERE id = :id"),
                {"id": self.job_id},
            )
        )

    @rule()
    def cancel(self) -> None:
        self._apply(lambda s: transitions.cancel(s, self.job_id))

    @rule()
    def retry(self) -> None:
        self._apply(lambda s: transitions.requeue(s, ids=[self.job_id]))

    @rule()
    def retry_waiting(self) -> None:
        """Retry of a queued or retrying job (its message may be lost): it runs now."""
        self._apply(lambda s: transitions.run_now(s, self.job_id))

    @rule()
    def dead_letter(self) -> None:
        self._apply(lambda s: transitions.fail_dead_lettered(s, self.job_id, "dlq"))

    @rule()
    def promote_if_scheduled(self) -> None:
        self._apply(lambda s: transitions.scheduled_to_queued(s, [self.job_id]))

    @invariant()
    def row_is_consistent(self) -> None:
        with self.sessions() as s:
            row = s.execute(
                text(
                    "SELECT status, worker_id, lease_expires_at, finished_at, attempts,"
                    " max_attempts FROM jobs WHERE id = :id"
                ),
                {"id": self.job_id},
            ).one()
        if row.status == JobStatus.RUNNING:
            assert row.worker_id and row.lease_expires_at is not None
        if row.status in {s.value for s in FINAL}:
            assert row.finished_at is not None
        assert 0 <= row.attempts <= row.max_attempts


def test_no_sequence_of_events_breaks_the_transition_table(runtime: Any) -> None:
    JobLifecycle.sessions = runtime.sessions
    run_state_machine_as_test(
        JobLifecycle,
        settings=settings(
            max_examples=100,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
