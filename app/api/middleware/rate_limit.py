"""The submit rate limit: a token bucket per caller (API key, or client address)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """Token bucket per caller: `rate` submissions per second, bursts up to `burst`.

    At most `max_callers` buckets are kept (callers are client addresses when auth is off,
    and IPv6 gives a client many): beyond that, full buckets (equal to a new one) are dropped,
    and if every bucket is in use, all of them; memory stays bounded either way.
    """

    def __init__(self, rate: float, burst: int, *, max_callers: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_callers = max_callers
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> float:
        """0 if allowed now, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.max_callers and who not in self._buckets:
                self._prune(now)
            tokens, at = self._buckets.get(who, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[who] = (tokens - 1, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [
            w for w, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for who in full:
            del self._buckets[who]
        if len(self._buckets) >= self.max_callers:
            self._buckets.clear()
