"""ctx.cancelled: reasons, callbacks, and the lease deadline it enforces by itself."""

from __future__ import annotations

import time

from app.tasks.registry import Cancellation


def test_the_first_reason_wins_and_callbacks_run_once() -> None:
    seen: list[str] = []
    cancelled = Cancellation()
    cancelled.on_cancel(lambda: seen.append("a"))
    cancelled.cancel("timeout")
    cancelled.cancel("shutdown")
    cancelled.on_cancel(lambda: seen.append("late"))  # runs at once: already cancelled
    assert cancelled.reason == "timeout" and seen == ["a", "late"]


def test_past_the_lease_deadline_it_reports_lease_lost_by_itself() -> None:
    cancelled = Cancellation()
    cancelled.expire_at(time.monotonic() + 0.2)
    assert not cancelled.is_set()
    started = time.monotonic()
    assert cancelled.wait(30)  # wakes at the deadline, not after 30 s
    assert time.monotonic() - started < 5
    assert cancelled.is_set() and cancelled.reason == "lease_lost"


def test_a_renewed_deadline_keeps_it_running() -> None:
    cancelled = Cancellation()
    cancelled.expire_at(time.monotonic() - 1)  # as if the worker had been paused past it
    assert cancelled.is_set() and cancelled.reason == "lease_lost"
    fresh = Cancellation()
    fresh.expire_at(time.monotonic() + 60)
    assert not fresh.wait(0.05) and not fresh.is_set()
