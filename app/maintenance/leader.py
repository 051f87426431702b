"""One holder at a time for fleet-wide maintenance passes: a PostgreSQL advisory lock per pass.

Every API process (and `jobq dispatcher`) runs the maintenance loops; a pass that must not run
in two of them at once first takes a transaction-level advisory lock with
`pg_try_advisory_xact_lock`. Whoever gets it is the leader for that pass; the others skip it.

Why per pass and not a session-level lock held by one elected process:

- nothing outlives the pass: no dedicated connection per process, no "am I still the leader"
  state to get wrong after a PostgreSQL restart, and it works through transaction-pooling
  proxies (PgBouncer in transaction mode, RDS Proxy) where session locks do not;
- the lock lives exactly as long as the pass's row locks: a leader killed mid-pass loses both
  together (PostgreSQL ends the transaction when the connection drops), and one that hangs or
  is cut off mid-pass loses them after `HOLD_LIMIT_SECONDS` (idle_in_transaction_session_timeout,
  set for the pass), so the rows it held are never stranded;
- takeover needs no detection: the next pass of any other process (at most one interval
  later) takes the lock.

The price: each process tries the lock every interval, so N processes make up to N passes per
interval. Passes are written to be cheap when there is nothing to do and idempotent (a pass
records what it did in the rows), so a pass right after another finds nothing.
"""

from __future__ import annotations

from enum import IntEnum

from sqlalchemy import text
from sqlalchemy.orm import Session

# pg_try_advisory_xact_lock(int, int): jobq's locks in their own namespace ("jobq" in ASCII),
# so an application sharing the database cannot collide with them by accident.
NAMESPACE = 0x6A6F6271
# The longest a pass may sit idle in its transaction (waiting on SQS while it holds the lock)
# before PostgreSQL ends it: well above the SQS client's timeouts, so only a hung holder hits it.
HOLD_LIMIT_SECONDS = 60


class Pass(IntEnum):
    """The passes that take a lock (the second key of the advisory lock)."""

    RECONCILE = 1


def lead(session: Session, which: Pass) -> bool:
    """Take `which`'s lock for the session's transaction; False if another process holds it."""
    session.execute(
        text(f"SET LOCAL idle_in_transaction_session_timeout = '{HOLD_LIMIT_SECONDS}s'")
    )
    got = session.scalar(
        text("SELECT pg_try_advisory_xact_lock(:ns, :key)"), {"ns": NAMESPACE, "key": int(which)}
    )
    return bool(got)
