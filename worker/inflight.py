"""The worker's in-flight jobs and the heartbeat that keeps their messages and leases alive."""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.db import translate_db_errors
from app.errors import JobqError
from app.jobs import transitions
from app.jobs.transitions import Claimed
from app.queue import Message, SqsQueue
from app.tasks.registry import JobContext

log = logging.getLogger("jobq.heartbeat")


@dataclass
class Entry:
    """A message this worker holds, and the running job's context once claimed."""

    message: Message
    ctx: JobContext | None = None
    job: Claimed | None = None
    completing: bool = False  # the handler is done; its outcome waits for the completer


class InFlight:
    """Thread-safe registry of held messages; also counts free execution slots.

    A poller reserves slots before a receive and admits what the receive returned against its
    reservation, so held + reserved never exceeds `slots`, however many pollers there are.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._entries: dict[str, Entry] = {}
        self._reserved = 0
        self._cond = threading.Condition()

    def _free(self) -> int:
        return max(0, self.slots - len(self._entries) - self._reserved)

    def add(self, message: Message) -> Entry:
        """Hold a message outside any reservation (takes one slot)."""
        with self._cond:
            entry = Entry(message)
            self._entries[message.receipt_handle] = entry
            return entry

    def reserve(self, limit: int, *, batch: int, linger: float, timeout: float) -> int:
        """Reserve up to `limit` free slots for one receive; 0 if none freed within `timeout`.

        While this worker is busy (slots held or reserved), wait up to `linger` seconds for
        `batch` slots to be free, so a receive fetches a full batch instead of the one or two
        slots a finishing job just freed. An idle worker reserves at once (low start latency).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._free() > 0, timeout):
                return 0
            # A full batch, or every slot other pollers' receives leave us.
            want = min(batch, limit, self.slots - self._reserved)
            busy = bool(self._entries) or self._reserved > 0
            if busy and linger > 0 and self._free() < want:
                self._cond.wait_for(lambda: self._free() >= want, linger)
            taken = min(self._free(), limit)
            self._reserved += taken
            return taken

    def admit(self, messages: list[Message], reserved: int) -> list[Entry]:
        """Hold a receive's messages against its reservation and return the unused slots."""
        if len(messages) > reserved:
            raise ValueError(f"received {len(messages)} message(s) for {reserved} slot(s)")
        with self._cond:
            self._reserved -= reserved
            entries = []
            for message in messages:
                entry = Entry(message)
                self._entries[message.receipt_handle] = entry
                entries.append(entry)
            if len(messages) < reserved:
                self._cond.notify_all()
            return entries

    def remove(self, message: Message) -> None:
        """Release a message's slot."""
        with self._cond:
            self._entries.pop(message.receipt_handle, None)
            self._cond.notify_all()

    def free(self) -> int:
        """Slots neither held nor reserved."""
        with self._cond:
            return self._free()

    def held(self) -> int:
        """Messages held right now."""
        with self._cond:
            return len(self._entries)

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to `timeout` for every held message to be released."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._entries, timeout)

    def snapshot(self) -> list[Entry]:
        """The held entries right now."""
        with self._cond:
            return list(self._entries.values())


class Heartbeat:
    """Every few seconds: extend visibility of held messages and leases of running jobs."""

    def __init__(
        self,
        inflight: InFlight,
        sqs: SqsQueue,
        sessions: sessionmaker[Session],
        worker_id: str,
        *,
        interval: float,
        visibility: int,
    ) -> None:
        self._inflight = inflight
        self._sqs = sqs
        self._sessions = sessions
        self._worker_id = worker_id
        self._interval = interval
        self._visibility = visibility
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One heartbeat; failures are logged and retried on the next beat."""
        entries = self._inflight.snapshot()
        if not entries:
            return
        try:
            self._sqs.change_visibility_batch([e.message for e in entries], self._visibility)
        except JobqError as exc:
            log.warning("heartbeat: extending visibility failed: %s", exc)
        running = [e.ctx.job_id for e in entries if e.ctx is not None]
        try:
            with translate_db_errors(), self._sessions.begin() as session:
                held = transitions.extend_leases(
                    session, self._worker_id, running, self._visibility
                )
        except JobqError as exc:
            log.warning("heartbeat: extending leases failed: %s", exc)
            return
        # A job the completer just finished is no longer 'running': not a lost lease.
        finishing = {e.ctx.job_id for e in entries if e.ctx is not None and e.completing}
        for job_id in set(running) - set(held) - finishing:
            log.warning("heartbeat: lease on job lost", extra={"job_id": str(job_id)})
        for e in entries:
            if e.ctx is not None and held.get(e.ctx.job_id):
                # Cancellation requested through the API: the handler can observe this.
                e.ctx.cancelled.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except Exception:
                log.exception("heartbeat crashed; continuing")

    def start(self) -> None:
        """Beat in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="jobq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def job_ids(entries: list[Entry]) -> list[uuid.UUID]:
    """Job ids of the entries that were claimed."""
    return [e.ctx.job_id for e in entries if e.ctx is not None]
