"""The worker's in-flight messages: what it holds, and its free execution slots."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from app.jobs.transitions import Claimed
from app.sqs.queue import Message
from app.tasks.registry import JobContext

log = logging.getLogger("jobq.heartbeat")


@dataclass
class Entry:
    """A message this worker holds, and the running job's context once claimed."""

    message: Message
    ctx: JobContext | None = None
    job: Claimed | None = None
    completing: bool = False  # the handler is done; its outcome waits for the completer
    # time.monotonic() just before the claim or the last lease renewal that succeeded was
    # sent: the lease in PostgreSQL runs at least `lease` seconds from then.
    renewed_at: float = 0.0


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
