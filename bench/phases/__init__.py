"""The benchmark's phases, in the order a run does them.

A phase is a function `(Bench) -> dict`: it starts what it needs on fresh queues (through
`Bench`), stops it again, and returns what it measured; run.py stores that under the phase's
name in latest.json. A new phase is a module here plus a line in PHASES. Children started by a
phase reach the servers at `bench.endpoints`, so `with bench.through(...)` runs any phase
against a proxy in front of PostgreSQL and SQS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import Bench

from phases import e2e, ingest, latency, limits, peer, profile, steady

Phase = Callable[[Bench], dict[str, Any]]

PHASES: dict[str, Phase] = {
    "limits": limits.run,
    "ingest": ingest.run,
    "latency": latency.run,
    "e2e": e2e.drain,
    "steady": steady.run,
    "pipeline": e2e.pipeline,
    "celery": peer.run,
    "profile": profile.run,
}
OPTIONAL = frozenset({"profile"})  # only with --profile (or --only)
DEFAULT = [name for name in PHASES if name not in OPTIONAL]
# Behind a latency profile: what issue 19 measures (ingest runs only its 32-client level).
NETWORK_PHASES = frozenset({"limits", "ingest", "latency", "e2e", "steady", "celery"})
