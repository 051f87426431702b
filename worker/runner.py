"""The worker process: its parts wired together, started, and stopped within the grace."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.catalogue.wiring import CataloguePublisher
from app.config import Settings
from app.db import HeldConnections, translate_db_errors
from app.errors import InvalidInput, JobqError
from app.jobs import controls
from app.loops import Backoff, DaemonPool
from app.observability import metrics
from app.runtime import Runtime
from app.schedules.service import sync_code_schedules
from app.sqs.limits import MAX_BATCH
from app.sqs.queue import SqsQueue, make_sqs_client
from app.tasks.retry import Backoff as RetrySchedule
from worker import policy, retry
from worker.after_commit import AfterCommit
from worker.completer import Completer, Completion
from worker.consumer import Consumer
from worker.dispatch import Dispatch, job_extra
from worker.dlq import DeadLetterConsumer
from worker.executor import Executor, Limits, Outcome
from worker.gate import DatabaseGate
from worker.heartbeat import Heartbeat, LeaseWatchdog, ProgressWriter, VisibilityKeeper
from worker.inflight import InFlight
from worker.presence import Presence

log = logging.getLogger("jobq.worker")

# Heartbeat and after-commit SQS calls give up quickly: a hung call must not outlast a
# heartbeat interval, nor hold up the deletes of later outcomes for long.
HEARTBEAT_SQS_TIMEOUT = 5.0


def new_worker_id() -> str:
    """host:pid:random, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def poll_weights(settings: Settings, sqs: SqsQueue) -> list[tuple[str, int]]:
    """(queue URL, weight) for each distinct SQS queue of the served named queues (JOBQ_QUEUES)
    and their priorities; shared URLs add their weights."""
    weights: dict[str, int] = {}
    for queue in settings.served_queues:
        for priority, weight in zip(("high", "default", "low"), settings.weights, strict=True):
            url = sqs.url_for(priority, queue)
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
        self.pool = DaemonPool("jobq-exec", s.worker_concurrency)
        self.executor = Executor(
            runtime.registry,
            Limits(s.task_timeout_seconds, s.max_result_bytes, s.max_traceback_bytes),
            max_idle=s.worker_concurrency,
        )
        self.limits = policy.Limits(s.max_crashes, s.max_redeliveries, s.effective_lease_margin)
        self._stopped = threading.Event()
        self.abandoned = 0  # handlers still running when the worker stopped (never joined)
        # Receives and completions aim at full batches of 10 (fewer with few slots, so that
        # every poller can have a batch in flight).
        batch = max(1, min(MAX_BATCH, s.worker_concurrency // s.effective_pollers))
        linger = s.batch_linger_ms / 1000
        self.after_commit = AfterCommit(self.sqs.with_client(self._short_sqs_client()))
        self.completer = Completer(
            self.db,
            self.sqs,
            self.worker_id,
            backoff_for=self._backoff_for,
            on_done=self._completed,
            linger=linger,
            fill=batch,
            others_running=lambda taken: self.inflight.held() > taken,
            stopping=self._stopped,
            actions=self.after_commit,
        )
        self.dispatch = Dispatch(
            runtime,
            self.worker_id,
            inflight=self.inflight,
            db=self.db,
            pool=self.pool,
            executor=self.executor,
            completer=self.completer,
            gate=DatabaseGate(lambda: self.dispatch.probe()),
            limits=self.limits,
        )
        self.gate = self.dispatch.gate
        self.consumer = Consumer(
            self.sqs,
            self.inflight,
            self.dispatch,
            wait_seconds=s.sqs_wait_seconds,
            queues=poll_weights(s, self.sqs),
            pollers=s.effective_pollers,
            linger=linger,
            batch=batch,
            gate=self.gate,
        )
        beat, lease = s.effective_heartbeat_seconds, s.visibility_timeout_seconds
        self.heartbeat = Heartbeat(
            self.inflight,
            runtime.sessions,
            self.worker_id,
            interval=beat,
            lease=lease,
            margin=self.limits.lease_margin,
        )
        self.visibility = VisibilityKeeper(
            self.inflight,
            self.sqs.with_client(self._short_sqs_client()),
            interval=beat,
            visibility=lease,
            margin=self.limits.lease_margin,
        )
        self.progress = ProgressWriter(
            self.inflight, runtime.sessions, self.worker_id, interval=s.progress_interval_seconds
        )
        self.watchdog = LeaseWatchdog(self.inflight, lease=lease, margin=self.limits.lease_margin)
        self.presence = Presence(
            runtime.sessions,
            self.worker_id,
            concurrency=s.worker_concurrency,
            running=self.inflight.held,
            interval=s.worker_presence_seconds,
        )
        self.dlq: DeadLetterConsumer | None = None
        self.max_receive_count: int | None = None
        self._schedules_declared = False
        # The API validates submits against what workers publish here (it has no task code).
        self.catalogue = CataloguePublisher(runtime.sessions, runtime.registry, s)

    def _short_sqs_client(self) -> Any:
        return make_sqs_client(
            self.settings, read_timeout=HEARTBEAT_SQS_TIMEOUT, connect_timeout=2, retries=1
        )

    def _backoff_for(self, task: str) -> RetrySchedule:
        try:
            return self.runtime.registry.get(task).backoff or self.settings.default_backoff
        except InvalidInput:  # a task this worker does not have
            return self.settings.default_backoff

    # -- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling and heartbeats; queue checks and the DLQ consumer wait for SQS."""
        # Limits declared in code must be in PostgreSQL before this worker's first claim;
        # if it is down now, the set-up thread writes them once it answers.
        declared = self._try(self._declare_limits)
        try:
            # Before the first receive, so a job submitted right after start-up is accepted.
            self.catalogue.publish()
        except JobqError as exc:
            log.warning("could not publish the task catalogue yet (retrying): %s", exc)
        for part in (
            self.pool,
            self.heartbeat,
            self.visibility,
            self.watchdog,
            self.gate,
            self.progress,
        ):
            part.start()
        self.presence.start()
        self.catalogue.start()
        self.after_commit.start()
        self.completer.start()
        self.consumer.start()
        # SQS may be unreachable right now: that must not stop the worker from starting.
        threading.Thread(
            target=self._setup_with_retries, args=(declared,), name="jobq-setup", daemon=True
        ).start()
        log.info(
            "worker started",
            extra={"worker_id": self.worker_id, "concurrency": self.settings.worker_concurrency},
        )

    def _declare_limits(self) -> None:
        with translate_db_errors(), self.runtime.sessions.begin() as session:
            controls.declare(session, self.runtime.registry.specs())

    @staticmethod
    def _try(step: Callable[[], None]) -> bool:
        try:
            step()
        except JobqError as exc:
            log.warning("start-up step failed; retrying in the background: %s", exc)
            return False
        return True

    def _setup_with_retries(self, declared: bool) -> None:
        def setup() -> None:
            self._declare_schedules()
            if not declared:
                self._declare_limits()
            self._read_redrive_policy()
            self._start_dlq_consumer()

        with contextlib.suppress(JobqError):  # raised only once stopping
            Backoff().retry(setup, what="queue set-up", stop=self._stopped)

    def _declare_schedules(self) -> None:
        """Upsert the schedules of this worker's @task(schedule=...) tasks (once)."""
        if not self._schedules_declared:
            sync_code_schedules(self.runtime.sessions, self.runtime.registry)
            self._schedules_declared = True

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
                limits=self.limits,
            )
            self.dlq.start()

    def _read_redrive_policy(self) -> None:
        """maxReceiveCount guards against jobs that crash their worker; it is not max_attempts."""
        counts: list[int] = []
        for url in self.sqs.distinct_urls(self.settings.served_queues):
            redrive = self.sqs.redrive_policy(url)
            if not redrive:
                log.warning(
                    "queue %s has no RedrivePolicy: a message that keeps crashing workers is "
                    "never set aside in a dead-letter queue",
                    url,
                )
                continue
            counts.append(int(redrive["maxReceiveCount"]))
        if counts:
            self.max_receive_count = min(counts)
            if self.max_receive_count < 2:
                log.warning(
                    "maxReceiveCount=%d: a job whose worker died gets no isolated second run "
                    "before SQS dead-letters it; use 3 or more",
                    self.max_receive_count,
                )

    # -- outcomes -------------------------------------------------------------------------

    def _completed(self, completion: Completion, status: str | None) -> None:
        """The completer recorded (or could not record) an outcome: count it, free the slot."""
        job = completion.job
        failure = completion.outcome.failure
        if status == "retrying":
            metrics.JOBS_RETRIED.labels(job.task).inc()
        elif status:
            metrics.JOBS_FINISHED.labels(job.task, status).inc()
        extra = {
            **job_extra(job),
            "status": status,
            "error": failure.message if failure else None,
            "outcome": failure.outcome if failure else None,
        }
        if status == "failed":
            # The final failure, with what a person needs to fix it.
            log.error("job failed", extra={**extra, "traceback": failure and failure.traceback})
        else:
            log.info("job %s", status or ("lost" if status == "" else "not recorded"), extra=extra)
        self.inflight.remove(completion.message)

    # -- shutdown ---------------------------------------------------------------------------

    def stop(self, grace: float | None = None) -> None:
        """Stop receiving, let running jobs finish within `grace`, then interrupt the rest."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        # The end of the grace is shared: a last chance for cooperative handlers, then a
        # moment to record what still runs. The whole stop fits in the grace.
        cooperative = min(2.0, grace * 0.2)
        self._stopped.set()
        self.consumer.signal_stop()
        if self.dlq is not None:
            self.dlq.signal_stop()
        log.info("worker stopping; waiting up to %.0f s for running jobs", grace)
        finish_by = deadline - cooperative - min(1.0, grace * 0.1)
        if not self.inflight.wait_empty(max(0.0, finish_by - time.monotonic())):
            self._interrupt_running(cooperative)
        self.consumer.join(max(0.0, deadline - time.monotonic()))
        self.completer.stop(max(1.0, deadline - time.monotonic()))
        # Deletes of what was just recorded, within the grace (a message not deleted comes
        # back and is settled as a duplicate).
        self.after_commit.stop(max(0.5, deadline - time.monotonic() - 1.0))
        for part in (
            self.heartbeat,
            self.visibility,
            self.watchdog,
            self.gate,
            self.progress,
            self.catalogue,
        ):
            part.signal_stop()
        # Marked stopped within what is left of the grace (a dead-looking row otherwise).
        self.presence.leave(max(0.0, min(1.0, deadline - time.monotonic())))
        self.db.close()
        self.pool.signal_stop()
        self.executor.close()
        log.info("worker stopped", extra={"worker_id": self.worker_id})

    def _interrupt_running(self, cooperative: float) -> None:
        """Grace is over: cancel handlers, record the stragglers interrupted, release messages."""
        for e in self.inflight.snapshot():
            if e.ctx is not None:
                e.ctx.cancelled.cancel("shutdown")
        # Cooperative handlers return promptly once cancelled; they are recorded interrupted.
        if self.inflight.wait_empty(cooperative):
            return
        leftover = [e for e in self.inflight.snapshot() if not e.completing]
        stuck = [
            Completion(
                e.message,
                e.job,
                Outcome(failure=retry.interrupted(self.limits.lease_margin)),
                e.job.max_attempts,
            )
            for e in leftover
            if e.job is not None
        ]
        self.abandoned = len(stuck)
        try:
            self.completer.complete_all(stuck)
        except JobqError as exc:
            log.warning("could not record interruption (the lease will expire): %s", exc)
        try:
            unstarted = [e.message for e in leftover if e.job is None]
            if unstarted:
                self.sqs.change_visibility_batch(unstarted, 0)
        except JobqError as exc:
            log.warning("could not release messages at shutdown: %s", exc)
        log.warning("interrupted %d job(s) still running at the end of the grace", len(stuck))

    def run_until_signalled(self) -> int:
        """Start, block until SIGTERM/SIGINT, stop within the grace; return the exit code."""
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
        if self.abandoned:
            # Handlers that ignored cancellation still run on their threads: end them with the
            # process now (their runs are recorded interrupted and will run again elsewhere).
            logging.shutdown()
            os._exit(0)
        return 0
