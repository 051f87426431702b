"""From a receive to running handlers: claim the batch, start the claimed, settle the rest."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable

from sqlalchemy import Connection, text

from app.config import Settings
from app.db import HeldConnections
from app.errors import DatabaseUnavailable, JobqError
from app.jobs import flow, transitions
from app.jobs.transitions import Claimed
from app.loops import DaemonPool
from app.observability import metrics, otel
from app.observability.trace import trace_id_var
from app.runtime import Runtime
from app.sqs.queue import Outgoing
from app.tasks.registry import JobContext
from worker import policy, retry
from worker.completer import Completer, Completion
from worker.executor import Executor, Outcome
from worker.gate import DatabaseGate
from worker.inflight import Entry, InFlight
from worker.settle import settle

log = logging.getLogger("jobq.worker")

# A run that is stopped because its worker shuts down or loses its lease ends `interrupted`:
# it costs no attempt and is run again (by whoever claims it) after this wait at least.
INTERRUPTED_RUNS = frozenset({"shutdown", "lease_lost"})


class Dispatch:
    """Claims each receive's jobs in one statement and runs them on the handler pool."""

    def __init__(
        self,
        runtime: Runtime,
        worker_id: str,
        *,
        inflight: InFlight,
        db: HeldConnections,
        pool: DaemonPool,
        executor: Executor,
        completer: Completer,
        gate: DatabaseGate,
        limits: policy.Limits,
    ) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self.sqs = runtime.sqs
        self.worker_id = worker_id
        self.inflight = inflight
        self.db = db
        self.pool = pool
        self.executor = executor
        self.completer = completer
        self.gate = gate
        self.limits = limits
        self.on_started: Callable[[Claimed], None] | None = None
        self.flow_switch = flow.Switch(self.settings.flow_refresh_seconds)

    def probe(self) -> None:
        """Raise unless PostgreSQL answers (the gate's probe)."""
        self.db.run(lambda conn: conn.execute(text("SELECT 1")), atomic=False)

    def __call__(self, entries: list[Entry]) -> None:
        """Claim the jobs of one receive's (held) messages, start the claimed."""
        try:
            self._claim_and_start(entries)
        except DatabaseUnavailable as exc:
            # Receiving on would only burn the messages' receive counts: stop until it is back.
            self.gate.close(exc)
            self._release([e for e in entries if e.job is None])
        except Exception as exc:  # noqa: BLE001 - the consumer loop must outlive any failure
            if isinstance(exc, JobqError):
                log.warning("claiming %d job(s) failed: %s", len(entries), exc)
            else:
                log.exception("claiming %d job(s) crashed", len(entries))
            self._release([e for e in entries if e.job is None])

    def _release(self, entries: list[Entry]) -> None:
        """Give unstarted messages back at once (visible again) and free their slots."""
        try:
            if entries:
                self.sqs.change_visibility_batch([e.message for e in entries], 0)
        except JobqError as exc:
            log.warning("could not release %d message(s): %s", len(entries), exc)
        for e in entries:
            self.inflight.remove(e.message)

    def _claim_and_start(self, entries: list[Entry]) -> None:
        nameless = [e for e in entries if e.message.job_id is None]
        if nameless:
            log.warning("deleting %d message(s) that name no job", len(nameless))
            self.sqs.delete_batch([e.message for e in nameless])
            for e in nameless:
                self.inflight.remove(e.message)
        named = [e for e in entries if e.message.job_id is not None]
        named = self._one_per_job(named)
        if not named:
            return
        ids = [e.message.job_id for e in named if e.message.job_id is not None]
        lease = self.settings.visibility_timeout_seconds
        sent_at = time.monotonic()
        # A retry after a dead connection is safe: if the first claim did commit, its jobs are
        # ours under a live lease, so they come back as unclaimed and return after the lease.
        # Without flow control the claim is one statement: no BEGIN/COMMIT round trips.
        flowing = self.db.run(self.flow_switch.active, atomic=False)
        claimed, deferred = self.db.run(
            lambda conn: self._claim(conn, ids, lease, flowing), atomic=flowing
        )
        if deferred:
            held = {d.job_id: d for d in deferred}
            later = [(e, held[e.message.job_id]) for e in named if e.message.job_id in held]
            named = [e for e in named if e.message.job_id not in held]
            self.pool.submit(functools.partial(self._defer, later))
        for e in named:
            job = claimed.pop(e.message.job_id, None)  # type: ignore[arg-type]
            if job is None:
                self.pool.submit(functools.partial(self._unclaimed, e))
                continue
            e.renewed_at = sent_at
            e.ctx = JobContext(
                job.job_id,
                job.task,
                job.attempt,
                job.max_attempts,
                job.failures,
                parents=job.parents or [],
            )
            e.ctx.cancelled.expire_at(sent_at + lease - self.limits.lease_margin)
            e.job = job
            self.pool.submit(functools.partial(self._run, e))

    def _one_per_job(self, named: list[Entry]) -> list[Entry]:
        """The first message of each job in this receive; the other copies are deleted.

        A re-publish racing the first send puts two messages of one job in one receive. One
        copy decides for both: had flow control admitted one copy and held back the other by
        job id, the claim would have had no message to run it (a lost attempt).
        """
        first: dict[uuid.UUID, Entry] = {}
        copies: list[Entry] = []
        for e in named:
            assert e.message.job_id is not None
            if e.message.job_id in first:
                copies.append(e)
            else:
                first[e.message.job_id] = e
        if copies:
            log.info("deleting %d duplicate message(s) of one receive", len(copies))
            try:
                self.sqs.delete_batch([e.message for e in copies])
            except JobqError as exc:  # they come back later as ordinary duplicates
                log.warning("could not delete %d duplicate message(s): %s", len(copies), exc)
            for e in copies:
                self.inflight.remove(e.message)
        return list(first.values())

    def _claim(
        self, conn: Connection, ids: list[uuid.UUID], lease: float, flowing: bool
    ) -> tuple[dict[uuid.UUID, Claimed], list[flow.Deferred]]:
        """Flow control's admission (when anything is paused or limited), then the claim."""
        margin = self.limits.lease_margin
        if flowing:
            admission = flow.admit(
                conn, ids, margin=margin, pause_recheck=self.settings.pause_recheck_seconds
            )
        else:
            admission = flow.Admission(ids)
        claimed = transitions.claim_many(
            conn,
            admission.ids,
            self.worker_id,
            lease,
            margin=margin,
            max_crashes=self.limits.max_crashes,
        )
        if admission.buckets:
            flow.spend(conn, admission, claimed)
        return claimed, admission.deferred

    def _defer(self, held: list[tuple[Entry, flow.Deferred]]) -> None:
        """Held back by flow control: a fresh delayed message each, then delete the received
        one, so no attempt and no SQS receive (the crash guard's count) is used up."""
        try:
            self.sqs.send_batch(
                [Outgoing(d.job_id, d.trace_id, d.delay, d.priority, d.queue) for _, d in held]
            )
            self.sqs.delete_batch([e.message for e, _ in held])
            for _, d in held:
                metrics.JOBS_DEFERRED.labels(d.reason).inc()
        except JobqError as exc:
            log.warning("could not defer %d held-back job(s): %s", len(held), exc)
        finally:
            for e, _ in held:
                self.inflight.remove(e.message)

    def _unclaimed(self, entry: Entry) -> None:
        """Decide about a delivery we could not claim (duplicate, finished, not due...)."""
        message = entry.message
        try:
            settle(
                self.runtime.sessions,
                self.sqs,
                message,
                lambda current: policy.unclaimed_delivery(current, self.limits),
            )
        except JobqError as exc:
            log.warning(
                "could not decide about an unclaimed message; it will be redelivered: %s",
                exc,
                extra={"job_id": str(message.job_id)},
            )
        except Exception:
            log.exception("unclaimed message handling crashed; it will be redelivered")
        finally:
            self.inflight.remove(message)

    def _run(self, entry: Entry) -> None:
        """Run a claimed job on a pool thread and hand its outcome to the completer."""
        job, ctx = entry.job, entry.ctx
        assert job is not None and ctx is not None
        try:
            outcome = self._execute(job, ctx)
        except Exception:
            log.exception("running the job crashed; it will be redelivered")
            self.inflight.remove(entry.message)
            return
        entry.completing = True
        self.completer.submit(Completion(entry.message, job, outcome, job.max_attempts))

    def _execute(self, job: Claimed, ctx: JobContext) -> Outcome:
        trace_id_var.set(job.trace_id)  # this pool thread's logs now carry the trace id
        isolate = job.lost_previous and self.settings.isolate_crashed
        log.info("job started", extra={**job_extra(job), "isolated": isolate or None})
        if job.attempt == 1 and job.queued_at is not None:
            wait = (job.started_at - job.queued_at).total_seconds()
            metrics.QUEUE_WAIT.labels(job.task).observe(max(0.0, wait))
        began = time.perf_counter()
        with (
            metrics.IN_FLIGHT.track_inprogress(),
            otel.span(
                "jobq.execute", job.trace_id, job_id=job.job_id, task=job.task, attempt=job.attempt
            ) as span,
        ):
            outcome = self.executor.run(ctx, job.payload, job.timeout_seconds, isolate=isolate)
            if span is not None and outcome.failure is not None:
                span.set_attribute("jobq.error", outcome.failure.message)
        metrics.JOB_DURATION.labels(job.task).observe(time.perf_counter() - began)
        if ctx.cancelled.reason in INTERRUPTED_RUNS:
            # Stopped by the worker, not by the job: whatever the handler returned, the run
            # did not finish its work.
            return Outcome(failure=retry.interrupted(self.limits.lease_margin))
        return outcome


def job_extra(job: Claimed) -> dict[str, object]:
    """Log fields naming a job's run."""
    return {
        "job_id": str(job.job_id),
        "task": job.task,
        "attempt": job.attempt,
        "trace_id": job.trace_id,
    }
