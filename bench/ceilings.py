"""What the round-trip times allow jobq's call pattern to do: the ceilings in docs/benchmarks.md.

One worker process with concurrency C, P pollers, S = SQS RTT, D = PostgreSQL RTT and
T = K·D per claim or finish (K = 1: each is one statement committing on its own; K = 3 in
jobq before its held connections ran lone statements without BEGIN and COMMIT, which
psycopg2 sends as round trips of their own) can go no faster than the
slowest of its three loops (each figure is an upper bound: CPU, the servers and the job's own
run time only lower it):

  receive  = P · min(10, C/P) / (S + T)              a poller: ReceiveMessage, then the claim
  complete = min(B / T, 10·F / S)                    the completer: one UPDATE for a batch of
                                                     B = 100; the after-commit thread deletes
                                                     10·F messages per round trip
  slots    = C / (S + 2·T)                           a slot is held at least from the receive
                                                     to the finish's commit (the batch fills,
                                                     <= JOBQ_BATCH_LINGER_MS, come on top)

Before the after-commit thread (worker/after_commit.py) the completer deleted a batch before
freeing its slots and starting the next: complete = B / (T + ceil(B/10)·S / F), slots =
C / (2·S + 2·T). `worker_pattern` tells which one the installed jobq has.

API: `POST /jobs` with N clients is bound by N / (HTTP + group commit T) per request; the
publisher by publish_threads · 10 / S messages per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TXN_ROUND_TRIPS = 3  # BEGIN, the statement, COMMIT (psycopg2 sends BEGIN on its own)
STATEMENT_ROUND_TRIPS = 1  # a lone statement on an autocommit connection
MAX_COMPLETION_BATCH = 100  # worker/completer.py


@dataclass(frozen=True)
class CallPattern:
    """How many SQS calls a worker keeps in flight: its pollers and its completer's deletes."""

    pollers: int
    deletes_in_flight: int
    linger_s: float
    deletes_after_commit: bool = True  # slots freed at commit, deletes on their own thread
    round_trips: int = STATEMENT_ROUND_TRIPS  # per claim or finish


def worker_pattern(concurrency: int) -> CallPattern:
    """The call pattern jobq's settings give a worker of this concurrency."""
    from app.config import Settings

    s = Settings(worker_concurrency=concurrency)
    pollers = getattr(s, "effective_pollers", s.worker_pollers)  # older jobq: a fixed number
    in_flight = getattr(s, "sqs_calls_in_flight", 1)  # older jobq: one delete call at a time
    import importlib.util

    after_commit = importlib.util.find_spec("worker.after_commit") is not None
    return CallPattern(pollers, in_flight, s.batch_linger_ms / 1000, after_commit, round_trips_per_write())


def round_trips_per_write() -> int:
    """Round trips of a claim or finish in the installed jobq (older ones: a transaction)."""
    import inspect

    from app.db import HeldConnections

    lone = "atomic" in inspect.signature(HeldConnections.run).parameters
    return STATEMENT_ROUND_TRIPS if lone else TXN_ROUND_TRIPS


def worker_ceiling(
    concurrency: int, sqs_ms: float, pg_ms: float, processes: int = 1
) -> dict[str, Any]:
    """Jobs/s the RTTs allow `processes` workers of `concurrency`, per loop and overall."""
    pattern = worker_pattern(concurrency)
    s, t = sqs_ms / 1000, pattern.round_trips * pg_ms / 1000
    p = pattern.pollers
    per_receive = min(10, max(1, concurrency // p))
    b, f = MAX_COMPLETION_BATCH, pattern.deletes_in_flight
    if pattern.deletes_after_commit:
        complete = min(b / t if t else math.inf, 10 * f / s if s else math.inf)
        held = s + 2 * t
    else:
        complete = b / (t + math.ceil(b / 10) * s / f) if s + t else math.inf
        held = 2 * s + 2 * t
    loops = {
        "receive": p * per_receive / (s + t) if s + t else math.inf,
        "complete": complete,
        "slots": concurrency / held if held else math.inf,
    }
    bound = min(loops, key=lambda k: loops[k])
    return {
        "pollers": p,
        "deletes_in_flight": pattern.deletes_in_flight,
        "round_trips": pattern.round_trips,
        "per_process": {k: round(v) if v != math.inf else None for k, v in loops.items()},
        "bound_by": bound,
        "jobs_per_s": processes * loops[bound] if loops[bound] != math.inf else None,
    }


def api_ceiling(clients: int, pg_ms: float, http_ms: float) -> float | None:
    """Requests/s `clients` closed-loop clients can reach when each waits one group commit."""
    per = http_ms / 1000 + round_trips_per_write() * pg_ms / 1000
    return clients / per if per else None


def ratio(measured: float | None, ceiling: float | None) -> float | None:
    """measured / ceiling (None when either is unknown)."""
    if not measured or not ceiling:
        return None
    return measured / ceiling
