"""The worker's claims and completions keep their connections, and survive losing them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from app.config import Settings
from app.runtime import Runtime
from tests.helpers import run_echo_job


def test_claims_and_completions_keep_their_connections(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    worker = worker_factory(settings, run=False, worker_concurrency=4, worker_pollers=1)
    worker.start()
    run_echo_job(api, db)  # warm-up: the poller and the completer hold their connections now
    checkouts: list[object] = []
    event.listen(worker.runtime.engine.pool, "checkout", lambda *a: checkouts.append(a))
    for _ in range(10):
        run_echo_job(api, db)
    # 10 claims and 10 completions; only a heartbeat may have checked a connection out.
    assert len(checkouts) <= 3, len(checkouts)


def test_a_worker_whose_connections_died_claims_and_completes_without_redelivery(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    # A visibility timeout far longer than the deadline below: a failed claim would make the
    # job wait for redelivery.
    worker = worker_factory(
        settings, run=False, worker_concurrency=4, worker_pollers=1, visibility_timeout_seconds=60
    )
    worker.start()
    run_echo_job(api, db)  # warm-up: the poller and the completer hold their connections now
    with db.cursor() as cur:  # what a PostgreSQL restart does to every pooled connection
        cur.execute(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = 'jobq' AND pid <> pg_backend_pid()"""
        )
        assert cur.fetchone()[0] >= 2  # at least the poller's and the completer's
    for _ in range(3):
        run_echo_job(api, db, timeout=10)  # not waiting for a redelivery
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM job_attempts WHERE outcome <> 'succeeded'")
        assert cur.fetchone()[0] == 0


# -- transactions PostgreSQL aborted to break a deadlock ----------------------------------------


def _abort_first(sqlstate: str, times: int) -> tuple[Any, list[int]]:
    """Work that PostgreSQL aborts with `sqlstate` on its first `times` runs, then returns 42."""
    from sqlalchemy import text

    runs: list[int] = []

    def work(conn: Any) -> int:
        runs.append(1)
        conn.execute(text("INSERT INTO job_attempts_probe VALUES (:n)"), {"n": len(runs)})
        if len(runs) <= times:
            conn.execute(
                text(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'; END $$")
            )
        return 42

    return work, runs


@pytest.fixture
def held(runtime: Runtime, db: Any) -> Iterator[Any]:
    from app.db import HeldConnections

    with db.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS job_attempts_probe (n int)")
        cur.execute("TRUNCATE job_attempts_probe")
    db.commit()
    connections = HeldConnections(runtime.engine)
    yield connections
    connections.close()


def _probe_rows(db: Any) -> list[int]:
    with db.cursor() as cur:
        cur.execute("SELECT n FROM job_attempts_probe ORDER BY n")
        return [r[0] for r in cur.fetchall()]


@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])  # deadlock, serialization failure
def test_a_transaction_aborted_by_a_conflict_runs_again(held: Any, db: Any, sqlstate: str) -> None:
    work, runs = _abort_first(sqlstate, times=2)
    assert held.run(work) == 42
    assert len(runs) == 3
    assert _probe_rows(db) == [3]  # the aborted runs wrote nothing


def test_conflict_retries_are_bounded_and_other_errors_are_not_retried(held: Any, db: Any) -> None:
    from app.db import CONFLICT_RETRIES
    from app.errors import DatabaseUnavailable, InvalidInput

    work, runs = _abort_first("40P01", times=CONFLICT_RETRIES + 1)
    with pytest.raises(DatabaseUnavailable, match="conflict"):
        held.run(work)
    assert len(runs) == CONFLICT_RETRIES + 1
    work, runs = _abort_first("22012", times=1)  # division_by_zero: bad data, not a conflict
    with pytest.raises(InvalidInput):
        held.run(work)
    assert len(runs) == 1 and _probe_rows(db) == []


# -- round trips: a lone statement needs no BEGIN/COMMIT --------------------------------------


def _statements_by_connection(engine: Any) -> tuple[dict[int, list[str]], Any]:
    """Record what each DBAPI connection of `engine` executes; (record, stop)."""
    seen: dict[int, list[str]] = {}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        # psycopg2 sends BEGIN itself (unseen here) unless the connection is in autocommit.
        mode = "autocommit" if dbapi.autocommit else "implicit-begin"
        seen.setdefault(id(dbapi), []).append(f"{mode}: {' '.join(statement.split())[:40]}")

    event.listen(engine, "before_cursor_execute", before)
    return seen, lambda: event.remove(engine, "before_cursor_execute", before)


def _record_while(
    api: Any, db: Any, worker_factory: Any, settings: Settings, action: Any
) -> list[list[str]]:
    """Statements of the worker's connections that claimed or finished during `action`."""
    worker = worker_factory(settings, run=False, worker_concurrency=4, worker_pollers=1)
    worker.start()
    run_echo_job(api, db)  # warm-up: the poller and the completer hold their connections now
    seen, stop = _statements_by_connection(worker.runtime.engine)
    try:
        action()
    finally:
        stop()
    claims = [s for s in seen.values() if any("WITH prev AS" in x for x in s)]
    finishes = [s for s in seen.values() if any("WITH v AS" in x for x in s)]
    assert claims and finishes, seen
    return claims + finishes


def test_a_plain_claim_and_finish_are_one_statement_each(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    for statements in _record_while(
        api, db, worker_factory, settings, lambda: run_echo_job(api, db)
    ):
        # Other lone statements may share the connection (the flow switch's read, the publish
        # confirm); none of it is wrapped in BEGIN/COMMIT.
        assert all(x.startswith("autocommit: ") for x in statements), statements
        assert not any(x.endswith((": BEGIN", ": COMMIT")) for x in statements), statements


def test_a_workflow_finish_queues_its_children_in_the_same_transaction(
    api: Any, worker_factory: Any, db: Any, settings: Settings
) -> None:
    from tests.helpers import job_statuses, wait_for

    def parent_and_child() -> None:
        parent = api.post("/jobs", json={"task": "echo"}).json()["id"]
        child = api.post("/jobs", json={"task": "echo", "depends_on": [parent]}).json()["id"]
        wait_for(
            lambda: job_statuses(db, [parent, child]) == {parent: "succeeded", child: "succeeded"},
            what="parent and child to succeed",
        )

    recorded = _record_while(api, db, worker_factory, settings, parent_and_child)
    for statements in (s for s in recorded if any("WITH v AS" in x for x in s)):
        i = next(i for i, x in enumerate(statements) if "WITH v AS" in x)
        assert statements[i - 1] == "autocommit: BEGIN", statements
        assert "autocommit: COMMIT" in statements[i + 1 :], statements


def test_atomic_work_that_raises_writes_nothing_and_lone_statements_commit_alone(
    held: Any, db: Any
) -> None:
    from sqlalchemy import text

    def two_then_fail(conn: Any) -> None:
        conn.execute(text("INSERT INTO job_attempts_probe VALUES (1)"))
        conn.execute(text("INSERT INTO job_attempts_probe VALUES (2)"))
        raise RuntimeError("handler bug between statements")

    with pytest.raises(RuntimeError):
        held.run(two_then_fail)
    assert _probe_rows(db) == []
    with pytest.raises(RuntimeError):
        held.run(two_then_fail, atomic=False)
    assert _probe_rows(db) == [1, 2]  # each statement committed on its own, as documented
    held.run(lambda conn: conn.execute(text("INSERT INTO job_attempts_probe VALUES (3)")))
    assert _probe_rows(db) == [1, 2, 3]  # the connection is usable after the rollback
