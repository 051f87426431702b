"""Nothing drifts: a job whose SQS message vanished (purge, deletes, an emulator restarted) is
sent again by the reconciler, one process at a time, and still finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.api.app import create_app
from app.maintenance import leader
from app.maintenance.reconciler import Reconciler
from app.sqs.queue import Outgoing
from tests.conftest import make_settings
from tests.helpers import ROOT, delete_messages, free_port, job_statuses, stop_process, wait_for

# Fast settings: a job counts as drifted 5 s (visibility) + 0.5 s (margin) after it was due.
FAST = {
    "visibility_timeout_seconds": 5,
    "reconcile_margin_seconds": 0.5,
    "reconcile_interval_seconds": 0.2,
}


def _insert(db: Any, n: int, status: str = "queued", **columns: str) -> list[str]:
    """n jobs inserted directly, sent (by their published_at) 5 minutes ago unless told."""
    values = {"published_at": "now() - interval '5 minutes'", **columns}
    names = ", ".join(values)
    exprs = ", ".join(values.values())
    with db.cursor() as cur:
        cur.execute(
            f"""INSERT INTO jobs (id, task, max_attempts, status, {names})
                SELECT gen_random_uuid(), 'echo', 3, %s, {exprs} FROM generate_series(1, %s)
                RETURNING id::text""",
            (status, n),
        )
        return [r[0] for r in cur.fetchall()]


def _reconciler(runtime: Any, **overrides: Any) -> Reconciler:
    options: dict[str, Any] = {
        "after_seconds": 60,
        "settle_seconds": 1,
        "lease_margin": 1,
        "interval_seconds": 1,
        "batch_size": 100,
    }
    return Reconciler(runtime.sqs, runtime.sessions, **{**options, **overrides})


def _held(runtime: Any) -> int:
    """Messages the main queue holds in any state."""
    return runtime.sqs.counts(runtime.sqs.url).messages


def _sent_ids(runtime: Any) -> set[str]:
    """Job ids of the messages in the queue (received, hidden for 30 s)."""
    ids: set[str] = set()
    for _ in range(20):
        batch = runtime.sqs.client.receive_message(
            QueueUrl=runtime.sqs.url, MaxNumberOfMessages=10, VisibilityTimeout=30
        ).get("Messages", [])
        if not batch:
            break
        ids |= {json.loads(m["Body"])["job_id"] for m in batch}
    return ids


def _reconciled(status: str) -> float:
    return REGISTRY.get_sample_value("jobq_reconciled_total", {"status": status}) or 0.0


def _all_older_than(db: Any, seconds: float) -> bool:
    """True once every job's send is more than `seconds` old by PostgreSQL's clock."""
    with db.cursor() as cur:
        cur.execute(
            "SELECT bool_and(published_at < now() - make_interval(secs => %s)) FROM jobs",
            (seconds,),
        )
        return bool(cur.fetchone()[0])


LATE = 4.0


def test_only_jobs_long_due_without_a_live_holder_are_resent(db: Any, runtime: Any) -> None:
    # Sent after the queue was made (so only lateness counts), late after LATE s: long enough
    # that the two jobs sent just before the pass are still fresh on a loaded machine (with
    # 1 s, a CI run took longer than that between their insert and the pass).
    sent = {"published_at": "now()"}
    lost = _insert(db, 5, **sent)
    _insert(db, 1, "retrying", run_at="now() + interval '1 minute'", **sent)  # not due yet
    # A live lease: its holder runs it (the message is in flight with it), whatever its age.
    live = "now() + interval '1 minute'"
    _insert(db, 1, "running", worker_id="'w'", lease_expires_at=live, **sent)
    dead = "now() - interval '5 minutes'"
    dead_holder = _insert(db, 1, "running", worker_id="'w'", lease_expires_at=dead, **sent)
    _insert(db, 1, "succeeded", finished_at="now()", **sent)
    wait_for(lambda: _all_older_than(db, LATE), timeout=LATE + 10, what="the jobs to be late")
    _insert(db, 2, **sent)  # sent just now: not due for a delivery yet
    before = _reconciled("queued"), _reconciled("running")

    reconciler = _reconciler(runtime, after_seconds=LATE, settle_seconds=0)
    assert reconciler.run_once() == 6
    assert _reconciled("queued") - before[0] == 5
    assert _reconciled("running") - before[1] == 1
    # Sent again once: the next pass finds the messages in SQS and the jobs freshly sent.
    assert reconciler.run_once() == 0
    assert _sent_ids(runtime) == set(lost + dead_holder)


def test_a_backlog_whose_messages_are_there_is_never_doubled(db: Any, runtime: Any) -> None:
    ids = _insert(db, 20)  # late (a backlog) but not lost: their messages wait in SQS
    runtime.sqs.send_batch([Outgoing(uuid.UUID(i)) for i in ids])
    reconciler = _reconciler(runtime)
    assert reconciler.run_once() == 0
    assert _held(runtime) == 20

    # Five messages deleted behind jobq's back: five jobs are sent again, no more.
    assert delete_messages(runtime.sqs.client, runtime.sqs.url, limit=5) == 5
    assert reconciler.run_once() == 5
    assert _held(runtime) == 20
    assert reconciler.run_once() == 0


def test_batches_are_bounded(db: Any, runtime: Any) -> None:
    _insert(db, 25)
    reconciler = _reconciler(runtime, batch_size=10, settle_seconds=0)
    assert [reconciler.run_once() for _ in range(4)] == [10, 10, 5, 0]


def test_a_slow_sqs_ends_the_sending_not_the_pass(db: Any, runtime: Any, monkeypatch: Any) -> None:
    from app.maintenance import reconciler as module

    _insert(db, 150)
    # Every round of sends "takes too long": each pass sends one round and stamps it.
    monkeypatch.setattr(module, "SEND_BUDGET_SECONDS", 0)
    reconciler = _reconciler(runtime, batch_size=500, settle_seconds=0)
    assert [reconciler.run_once() for _ in range(3)] == [100, 50, 0]
    assert _held(runtime) == 150


def test_a_recreated_queue_gets_its_jobs_at_once(db: Any, runtime: Any) -> None:
    # Sent a second ago, so not late yet; but the queue was created after the send (the
    # emulator restarted), so the message cannot be in it.
    ids = _insert(db, 3, published_at="now() - interval '3 seconds'")
    client, url = runtime.sqs.client, runtime.sqs.url
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    name = url.rsplit("/", 1)[1]
    client.delete_queue(QueueUrl=url)
    keep = {k: attrs[k] for k in ("VisibilityTimeout", "RedrivePolicy") if k in attrs}
    assert client.create_queue(QueueName=name, Attributes=keep)["QueueUrl"] == url
    assert _reconciler(runtime, settle_seconds=0).run_once() == 3
    assert _sent_ids(runtime) == set(ids)


def _hold_lock_in_child(database_url: str) -> subprocess.Popen[str]:
    """A process holding the reconciler's advisory lock on its session, as a leader would."""
    from sqlalchemy.engine import make_url

    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    code = (
        "import psycopg2, sys, time\n"
        f"c = psycopg2.connect({dsn!r}); c.autocommit = True\n"
        f"c.cursor().execute('SELECT pg_advisory_lock({leader.NAMESPACE}, "
        f"{int(leader.Pass.RECONCILE)})')\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_one_pass_at_a_time_and_a_killed_holder_is_taken_over(
    db: Any, runtime: Any, database_url: str
) -> None:
    _insert(db, 4)
    reconciler = _reconciler(runtime)
    holder = _hold_lock_in_child(database_url)
    try:
        assert reconciler.run_once() == 0  # another process is making the pass
        assert _held(runtime) == 0
    finally:
        holder.kill()  # SIGKILL: PostgreSQL releases its lock when the connection drops
        holder.wait(10)
    assert wait_for(reconciler.run_once, timeout=10, what="the lock to be free") == 4


def test_queue_purged_behind_jobqs_back_jobs_still_finish(
    db: Any, database_url: str, sqs_endpoint: str, worker_factory: Any
) -> None:
    settings = make_settings(database_url, sqs_endpoint, **FAST)
    before = _reconciled("queued")
    with TestClient(create_app(settings)) as api:
        ids = [
            api.post("/jobs", json={"task": "echo", "payload": {"i": i}}).json()["id"]
            for i in range(15)
        ]
        wait_for(lambda: _unsent(db) == 0, what="every job to be sent")
        api.app.state.runtime.sqs.client.purge_queue(QueueUrl=settings.sqs_queue_url)
        worker_factory(settings)
        wait_for(
            lambda: set(job_statuses(db, ids).values()) == {"succeeded"},
            timeout=60,
            what="every job to succeed after the purge",
        )
    assert _reconciled("queued") - before == 15


def test_retry_sends_a_waiting_job_again_to_run_now(
    db: Any, settings: Any, worker_factory: Any
) -> None:
    settings = settings.model_copy(update={"reconcile_interval_seconds": 0})  # retry alone
    with TestClient(create_app(settings)) as api:
        lost = _insert(db, 1)[0]  # queued, its message gone
        waiting = _insert(db, 1, "retrying", run_at="now() + interval '1 hour'")[0]
        held = _insert(
            db, 1, "running", worker_id="'w'", lease_expires_at="now() + interval '1 minute'"
        )[0]
        for job_id in (lost, waiting):
            resp = api.post(f"/jobs/{job_id}/retry")
            assert resp.status_code == 200, resp.text
            assert resp.json()["status"] == "queued" and resp.json()["run_at"] is None
        assert api.post(f"/jobs/{held}/retry").status_code == 409
        worker_factory(settings)
        wait_for(
            lambda: job_statuses(db, [lost, waiting]) == {lost: "succeeded", waiting: "succeeded"},
            timeout=30,
            what="both retried jobs to succeed",
        )


def _unsent(db: Any) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs WHERE published_at IS NULL")
        return int(cur.fetchone()[0])


def _dev(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """`jobq dev` (embedded SQS, the given PostgreSQL) in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dev"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_make_dev_restart_loses_the_queue_but_not_the_jobs(
    db: Any, database_url: str, tmp_path: Any
) -> None:
    """`make dev` keeps PostgreSQL's data but its SQS server starts empty: queued jobs run
    after the restart, with the default reconciler settings."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SQS_", "JOBQ_"))}
    env.update(
        DATABASE_URL=database_url,
        JOBQ_TEST_DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        JOBQ_DEV_SQS_PORT=str(free_port()),
        JOBQ_DEV_DIR=str(tmp_path),
        JOBQ_TASK_MODULES="tests.tasks",
        JOBQ_WORKER_CONCURRENCY="1",
        JOBQ_METRICS_PORT="0",
        JOBQ_LOG_FORMAT="json",
        JOBQ_SHUTDOWN_GRACE_SECONDS="5",
        PYTHONPATH=str(ROOT),
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with open(tmp_path / "dev.log", "ab") as log:
        first = _dev(env, log)
        try:
            wait_for(up, timeout=90, what="jobq dev to answer")
            body = {"jobs": [{"task": "record", "payload": {"sleep": 1}} for _ in range(6)]}
            resp = httpx.post(url + "/jobs/batch", json=body, timeout=10)
            ids = [i["job"]["id"] for i in resp.json()["items"]]
            wait_for(lambda: "succeeded" in job_statuses(db, ids).values(), timeout=30)
        finally:
            stop_process(first, grace=60, group=True)
        waiting = [j for j, s in job_statuses(db, ids).items() if s in ("queued", "retrying")]
        assert len(waiting) >= 2, job_statuses(db, ids)  # their messages died with the server
        second = _dev(env, log)
        try:
            wait_for(up, timeout=90, what="jobq dev to answer again")
            restarted = time.monotonic()
            wait_for(
                lambda: set(job_statuses(db, ids).values()) == {"succeeded"},
                timeout=60,
                what="the jobs queued before the restart to succeed after it",
            )
            print(
                f"\njobs lost with the SQS server done {time.monotonic() - restarted:.1f} s"
                " after the restarted API answered"
            )
        finally:
            stop_process(second, grace=60, group=True)
    assert "re-sent" in (tmp_path / "dev.log").read_text(errors="replace")
