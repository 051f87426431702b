"""The worker process: consumer + executor + completer, heartbeats, DLQ consumer, shutdown."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from app.config import Settings
from app.db import HeldConnections, translate_db_errors
from app.errors import JobqError
from app.jobs import transitions
from app.jobs.states import FINAL, JobStatus
from app.jobs.transitions import Claimed
from app.observability import metrics, tracing
from app.observability.context import trace_id_var
from app.queue import Message
from app.runtime import Runtime
from app.sqs_limits import MAX_BATCH
from app.tasks.registry import JobContext
from worker.completer import Completer, Completion
from worker.consumer import Consumer
from worker.dlq import DeadLetterConsumer
from worker.executor import Executor, Outcome
from worker.inflight import Entry, Heartbeat, InFlight
from worker.retry import Failure

log = logging.getLogger("jobq.worker")

INTERRUPTED = "interrupted: worker shut down before the job finished"
# A delivery that was claimable a moment after its claim failed comes back this much later.
RECLAIM_DELAY_SECONDS = 1


def new_worker_id() -> str:
    """host:pid:random, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def poll_weights(settings: Settings) -> list[tuple[str, int]]:
    """(queue URL, weight) for each distinct priority queue; shared URLs add their weights."""
    weights: dict[str, int] = {}
    for priority, weight in zip(("high", "default", "low"), settings.weights, strict=True):
        url = settings.queue_urls[priority]
        weights[url] = weights.get(url, 0) + weight
    return list(weights.items())


class Worker:
    """Runs jobs from SQS with at most `worker_concurrency` at once."""

    def __init__(self, runtime: Runtime, *, worker_id: str | None = None) -> None:
        s: Settings = runtime.settings
        self.runtime = runtime
        self.settings = s
        self.worker_id = worker_id or new_worker_id()
        self.sqs = runtime.sqs
        self.inflight = InFlight(s.worker_concurrency)
        # Claims and completions keep their connections (no pre-ping per transaction).
        self.db = HeldConnections(runtime.engine)
        self.pool = ThreadPoolExecutor(s.worker_concurrency, thread_name_prefix="jobq-exec")
        self.executor = Executor(
            runtime.registry, s.task_timeout_seconds, max_idle=s.worker_concurrency
        )
        # Receives and completions aim at full batches of 10 (fewer with few slots, so that
        # every poller can have a batch in flight).
        batch = max(1, min(MAX_BATCH, s.worker_concurrency // s.worker_pollers))
        linger = s.batch_linger_ms / 1000
        self.completer = Completer(
            self.db,
            self.sqs,
            self.worker_id,
            backoff_base=s.backoff_base_seconds,
            backoff_cap=s.backoff_cap_seconds,
            on_done=self._completed,
            linger=linger,
            fill=batch,
            others_running=lambda taken: self.inflight.held() > taken,
        )
        self.consumer = Consumer(
            self.sqs,
            self.inflight,
            self._dispatch,
            wait_seconds=s.sqs_wait_seconds,
            queues=poll_weights(s),
            pollers=s.worker_pollers,
            linger=linger,
            batch=batch,
        )
        self.heartbeat = Heartbeat(
            self.inflight,
            self.sqs,
            runtime.sessions,
            self.worker_id,
            interval=s.effective_heartbeat_seconds,
            visibility=s.visibility_timeout_seconds,
        )
        self.dlq: DeadLetterConsumer | None = None
        self.max_receive_count: int | None = None
        self._stopped = threading.Event()
        self._setup_thread: threading.Thread | None = None

    # -- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling and heartbeats; queue checks and the DLQ consumer wait for SQS."""
        self.heartbeat.start()
        self.completer.start()
        self.consumer.start()
        # SQS may be unreachable right now: that must not stop the worker from starting.
        self._setup_thread = threading.Thread(
            target=self._setup_with_retries, name="jobq-setup", daemon=True
        )
        self._setup_thread.start()
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "concurrency": self.settings.worker_concurrency},
        )

    def _setup_with_retries(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                self._read_redrive_policy()
                self._start_dlq_consumer()
                return
            except JobqError as exc:
                log.warning("queue set-up failed; retrying in %.1f s: %s", delay, exc)
                self._stopped.wait(delay)
                delay = min(delay * 2, 30.0)

    def _start_dlq_consumer(self) -> None:
        if not self.settings.dlq_consumer or self._stopped.is_set():
            return
        dlq_url = self.sqs.resolve_dlq_url()
        if dlq_url:
            self.dlq = DeadLetterConsumer(
                self.sqs,
                self.runtime.sessions,
                dlq_url,
                wait_seconds=self.settings.sqs_wait_seconds,
            )
            self.dlq.start()

    def _read_redrive_policy(self) -> None:
        counts: list[int] = []
        for url in self.sqs.distinct_urls():
            policy = self.sqs.redrive_policy(url)
            if not policy:
                log.warning("queue %s has no RedrivePolicy: exhausted jobs never reach a DLQ", url)
                continue
            counts.append(int(policy["maxReceiveCount"]))
        if not counts:
            return
        self.max_receive_count = min(counts)
        if self.max_receive_count != self.settings.max_attempts:
            log.warning(
                "JOBQ_MAX_ATTEMPTS=%d but the queue's maxReceiveCount=%d; SQS dead-letters at "
                "the smaller, so attempts are capped there",
                self.settings.max_attempts,
                self.max_receive_count,
            )

    @property
    def attempt_cap(self) -> int:
        """No job gets more attempts than the queue delivers before dead-lettering."""
        return self.max_receive_count or 10_000

    # -- messages ---------------------------------------------------------------------------

    def _dispatch(self, entries: list[Entry]) -> None:
        """Claim the jobs of one receive's (held) messages in one statement, start the claimed."""
        try:
            self._claim_and_start(entries)
        except Exception as exc:  # noqa: BLE001 - the consumer loop must outlive any failure
            # Nothing was started: the messages come back after their visibility timeout.
            if isinstance(exc, JobqError):
                log.warning(
                    "claiming %d job(s) failed; they will be redelivered: %s", len(entries), exc
                )
            else:
                log.exception("claiming %d job(s) crashed; they will be redelivered", len(entries))
            for e in entries:
                if e.job is None:
                    self.inflight.remove(e.message)

    def _claim_and_start(self, entries: list[Entry]) -> None:
        nameless = [e for e in entries if e.message.job_id is None]
        if nameless:
            log.warning("deleting %d message(s) that name no job", len(nameless))
            self.sqs.delete_batch([e.message for e in nameless])
            for e in nameless:
                self.inflight.remove(e.message)
        named = [e for e in entries if e.message.job_id is not None]
        if not named:
            return
        ids = [e.message.job_id for e in named if e.message.job_id is not None]
        # A retry after a dead connection is safe: if the first claim did commit, its jobs are
        # ours under a live lease, so they come back as unclaimed and return after the lease.
        lease = self.settings.visibility_timeout_seconds
        claimed = self.db.run(
            lambda conn: transitions.claim_many(conn, ids, self.worker_id, lease, self.attempt_cap)
        )
        for e in named:
            job = claimed.pop(e.message.job_id, None)  # type: ignore[arg-type]
            if job is None:
                self.pool.submit(self._handle_unclaimed, e)
                continue
            max_attempts = min(job.max_attempts, self.attempt_cap)
            e.ctx = JobContext(job.job_id, job.task, job.attempt, max_attempts)
            e.job = job
            self.pool.submit(self._run_job, e)

    def _handle_unclaimed(self, entry: Entry) -> None:
        message = entry.message
        try:
            assert message.job_id is not None
            self._unclaimed(message, message.job_id)
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

    def _run_job(self, entry: Entry) -> None:
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
        self.completer.submit(Completion(entry.message, job, outcome, ctx.max_attempts))

    def _execute(self, job: Claimed, ctx: JobContext) -> Outcome:
        trace_id_var.set(job.trace_id)  # this pool thread's logs now carry the trace id
        log.info("job started", extra=_job_extra(job))
        if job.attempt == 1 and job.queued_at is not None:
            wait = (job.started_at - job.queued_at).total_seconds()
            metrics.QUEUE_WAIT.labels(job.task).observe(max(0.0, wait))
        began = time.perf_counter()
        with (
            metrics.IN_FLIGHT.track_inprogress(),
            tracing.span(
                "jobq.execute", job.trace_id, job_id=job.job_id, task=job.task, attempt=job.attempt
            ) as span,
        ):
            outcome = self.executor.run(ctx, job.payload, job.timeout_seconds)
            if span is not None and outcome.failure is not None:
                span.set_attribute("jobq.error", outcome.failure.message)
        metrics.JOB_DURATION.labels(job.task).observe(time.perf_counter() - began)
        if self._stopped.is_set() and ctx.cancelled.is_set() and not outcome.ok:
            outcome = Outcome(failure=Failure(INTERRUPTED, True, "interrupted"))
        return outcome

    def _completed(self, completion: Completion, status: str | None) -> None:
        """The completer recorded (or could not record) an outcome: count it, free the slot."""
        job = completion.job
        if status == JobStatus.RETRYING.value:
            metrics.JOBS_RETRIED.labels(job.task).inc()
        elif status:
            metrics.JOBS_FINISHED.labels(job.task, status).inc()
        failure = completion.outcome.failure
        log.info(
            "job %s",
            status or ("lost" if status == "" else "not recorded"),
            extra={
                **_job_extra(job),
                "status": status,
                "error": failure.message if failure else None,
            },
        )
        self.inflight.remove(completion.message)

    def _unclaimed(self, message: Message, job_id: uuid.UUID) -> None:
        """Decide about a delivery we could not claim (duplicate, finished, or exhausted)."""
        with translate_db_errors(), self.runtime.sessions.begin() as session:
            current = transitions.view(session, job_id)
            if current is None or current.status in FINAL:
                pass  # unknown or finished: the message is a leftover duplicate
            elif current.status == JobStatus.RUNNING and current.lease_seconds_left > 0:
                # Another worker holds it under a live lease: leave this copy alone.
                self.sqs.change_visibility(message, current.lease_seconds_left + 1)
                return
            elif current.run_at_seconds_left > 1:
                # Delivered before its run_at (e.g. a re-publish): hide it until due.
                self.sqs.change_visibility(message, current.run_at_seconds_left)
                return
            elif current.status == JobStatus.SCHEDULED:
                pass  # the dispatcher publishes a fresh message when it is due
            elif current.attempts >= min(current.max_attempts, self.attempt_cap):
                # Its last attempt died with its worker: fail it; SQS redrive takes the message.
                transitions.fail_exhausted(
                    session,
                    job_id,
                    f"exhausted {current.attempts} attempt(s); last attempt lost",
                    dead_letter=False,
                )
                self.sqs.change_visibility(message, 0)
                return
            else:
                # Claimable by now: the claim just missed it (a lease expiring between the claim
                # and this look, a run_at within the second). Deleting would lose the job.
                self.sqs.change_visibility(message, RECLAIM_DELAY_SECONDS)
                return
        self.sqs.delete(message)

    # -- shutdown ---------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Stop receiving, let running jobs finish within `grace`, then release the rest."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        self._stopped.set()
        self.consumer.stop()
        if self.dlq is not None:
            self.dlq.stop()
        log.info("worker stopping; waiting up to %.0f s for running jobs", grace)
        if not self.inflight.wait_empty(max(0.0, deadline - time.monotonic())):
            self._interrupt_running()
        self.consumer.join(max(0.0, deadline - time.monotonic()))
        self.completer.stop()
        self.heartbeat.stop()
        self.db.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped", extra={"worker_id": self.worker_id})

    def _interrupt_running(self) -> None:
        """Grace is over: cancel handlers, record the interruption, release their messages."""
        entries = self.inflight.snapshot()
        for e in entries:
            if e.ctx is not None:
                e.ctx.cancelled.set()
        # Cooperative handlers return promptly once cancelled and are completed normally.
        if self.inflight.wait_empty(2.0):
            return
        leftover = self.inflight.snapshot()
        interrupted = Outcome(failure=Failure(INTERRUPTED, True, "interrupted"))
        stuck = [
            Completion(
                e.message, e.job, interrupted, min(e.job.max_attempts, self.attempt_cap), True
            )
            for e in leftover
            if e.job is not None
        ]
        try:
            self.completer.complete_all(stuck)
        except JobqError as exc:
            log.warning("could not record interruption (lease will expire): %s", exc)
        try:
            self.sqs.change_visibility_batch([e.message for e in leftover if e.job is None], 0)
        except JobqError as exc:
            log.warning("could not release messages at shutdown: %s", exc)
        log.warning(
            "released %d job(s) still running at the end of the grace period", len(leftover)
        )

    def run_until_signalled(self) -> int:
        """Start, block until SIGTERM/SIGINT, stop gracefully; return the exit code."""
        received = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s", signal.Signals(signum).name)
            received.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not received.wait(1.0):
            pass
        self.stop()
        return 0


def _job_extra(job: Claimed) -> dict[str, object]:
    return {
        "job_id": str(job.job_id),
        "task": job.task,
        "attempt": job.attempt,
        "trace_id": job.trace_id,
    }
