"""The POST /jobs fast path: plain submits served without FastAPI's router (FastSubmit),
concurrent submissions committed together (GroupCommit), answers built without reading the row
back, and the publisher's batching, lingering and parallel sends."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.errors import DatabaseUnavailable, JobqError
from app.outbox.group_commit import GroupCommit
from app.outbox.publisher import Publisher
from app.sqs.queue import Outgoing
from tests.helpers import wait_for

# -- GroupCommit, on its own ------------------------------------------------------------------


class FakeStore:
    """Stands in for the INSERT: records each batch; fails on demand."""

    def __init__(self, fail: Any = None, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.announced: list[str] = []
        self.fail = fail
        self.delay = delay

    def insert(self, rows: list[dict[str, Any]]) -> list[Any]:
        time.sleep(self.delay)  # a commit takes a while: others queue up meanwhile
        if self.fail is not None:
            error = self.fail(rows)
            if error is not None:
                raise error
        self.batches.append([r["name"] for r in rows])
        return [f"view of {r['name']}" for r in rows]

    def announce(self, rows: list[dict[str, Any]]) -> None:
        self.announced.extend(r["name"] for r in rows)


async def _submit_all(group: GroupCommit, names: list[str]) -> list[Any]:
    return await asyncio.gather(*(group.submit({"name": n}) for n in names), return_exceptions=True)


def test_concurrent_submissions_share_commits_and_each_gets_its_own_row() -> None:
    fake = FakeStore(delay=0.02)
    group = GroupCommit(fake.insert, fake.announce, threads=1)  # type: ignore[arg-type]
    names = [f"job-{i}" for i in range(50)]
    try:
        results = asyncio.run(_submit_all(group, names))
    finally:
        group.close()
    assert results == [f"view of {n}" for n in names]
    assert sorted(n for b in fake.batches for n in b) == sorted(names)
    assert len(fake.batches) < 10, fake.batches  # shared transactions, not one per request
    assert sorted(fake.announced) == sorted(names)  # published once, after the commit


def test_one_bad_row_fails_alone() -> None:
    def fail(rows: list[dict[str, Any]]) -> Exception | None:
        return ValueError("bad row") if any(r["name"] == "bad" for r in rows) else None

    fake = FakeStore(fail=fail, delay=0.01)
    group = GroupCommit(fake.insert, fake.announce, threads=1)  # type: ignore[arg-type]
    names = ["a", "b", "bad", "c", "d"]
    try:
        results = asyncio.run(_submit_all(group, names))
    finally:
        group.close()
    assert isinstance(results[2], ValueError)
    assert [r for i, r in enumerate(results) if i != 2] == [f"view of {n}" for n in "abcd"]
    assert "bad" not in fake.announced and sorted(fake.announced) == list("abcd")


def test_database_down_fails_every_waiter_with_503() -> None:
    fake = FakeStore(fail=lambda rows: DatabaseUnavailable("database unavailable: down"))
    group = GroupCommit(fake.insert, fake.announce, threads=2)  # type: ignore[arg-type]
    try:
        results = asyncio.run(_submit_all(group, [str(i) for i in range(20)]))
    finally:
        group.close()
    assert all(isinstance(r, DatabaseUnavailable) for r in results)
    assert len({id(r) for r in results}) == 20  # each request raises its own exception
    assert fake.batches == [] and fake.announced == []


def test_close_commits_what_is_queued_then_refuses() -> None:
    fake = FakeStore(delay=0.05)
    group = GroupCommit(fake.insert, fake.announce, threads=1)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        futures = [group.submit({"name": str(i)}) for i in range(5)]
        await asyncio.sleep(0)
        closer = threading.Thread(target=group.close)
        closer.start()
        results = await asyncio.gather(*futures)
        closer.join()
        return results

    assert asyncio.run(scenario()) == [f"view of {i}" for i in range(5)]
    assert sorted(fake.announced) == [str(i) for i in range(5)]

    async def late() -> None:
        await group.submit({"name": "late"})

    with pytest.raises(DatabaseUnavailable, match="shutting down"):
        asyncio.run(late())


# -- through the API ---------------------------------------------------------------------------


def test_answer_is_the_stored_job(api: Any) -> None:
    body = {
        "task": "echo",
        "payload": {"big": 10**30, "s": "é", "nested": [{"k": None}]},
        "delay_seconds": 60,
        "priority": "low",
        "timeout_seconds": 12.5,
        "max_attempts": 2,
    }
    created = api.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    stored = api.get(f"/jobs/{created.json()['id']}").json()
    assert created.json() == stored
    assert stored["created_at"].endswith("Z") and stored["run_at"].endswith("Z")


def _count_route_calls(monkeypatch: Any) -> list[int]:
    """Count answers built by the FastAPI route for POST /jobs (the fast path builds its own)."""
    from app.api.routes import jobs as routes

    calls: list[int] = []
    real = routes._json

    def counting(model: Any, status_code: int) -> Any:
        calls.append(status_code)
        return real(model, status_code)

    monkeypatch.setattr(routes, "_json", counting)
    return calls


def _posts_counted(api: Any, status: str) -> float:
    """jobq_http_requests_total for POST /jobs with `status` (the registry is per process)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "jobq_http_requests_total", {"method": "POST", "route": "/jobs", "status": status}
    )
    return value or 0.0


def test_plain_submit_takes_the_fast_path_keyed_the_full_route(api: Any, monkeypatch: Any) -> None:
    calls = _count_route_calls(monkeypatch)
    created_before, invalid_before = _posts_counted(api, "201"), _posts_counted(api, "422")
    plain = api.post("/jobs", json={"task": "echo", "payload": {"a": 1}})
    assert api.post("/jobs", json={"task": "no-such-task"}).status_code == 422
    # Metrics label fast-path requests by the route template, like the full route's.
    assert _posts_counted(api, "201") == created_before + 1
    assert _posts_counted(api, "422") == invalid_before + 1
    assert plain.status_code == 201, plain.text
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == api.get(f"/jobs/{plain.json()['id']}").json()
    assert calls == []  # answered without FastAPI's route
    keyed = api.post("/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "fast-k"})
    assert keyed.status_code == 201 and calls == [201]
    in_body = {"task": "echo", "idempotency_key": "fast-body-k"}
    first, replay = api.post("/jobs", json=in_body), api.post("/jobs", json=in_body)
    assert (first.status_code, replay.status_code) == (201, 200)  # body keys: fast path too
    assert replay.json()["id"] == first.json()["id"] and calls == [201]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"payload": {}}',
        b'{"task": "no-such-task"}',
        b'{"task": "echo", "max_attempts": 1000}',
        b'{"task": "echo", "priority": "urgent"}',
        b'{"task": "echo", "delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}',
        b'{"task": "echo", "payload": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
)
def test_fast_path_errors_are_the_full_routes(api: Any, raw: bytes) -> None:
    json_type = {"content-type": "application/json"}
    fast = api.post("/jobs", content=raw, headers=json_type)
    # An Idempotency-Key sends the same body down the full FastAPI route.
    full = api.post("/jobs", content=raw, headers={**json_type, "Idempotency-Key": "err-k"})
    assert 400 <= fast.status_code < 500, fast.text
    assert (fast.status_code, fast.json()) == (full.status_code, full.json())
    assert fast.json()["error"]["field"]


def test_fast_path_eligibility() -> None:
    from app.api.routes.fast_submit import eligible

    def scope(method: str = "POST", path: str = "/jobs", **headers: str) -> dict[str, Any]:
        raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        return {"type": "http", "method": method, "path": path, "headers": raw}

    assert eligible(scope(content_type="application/json"))
    assert eligible(scope(content_type="Application/JSON; charset=utf-8"))
    assert not eligible(scope())  # no content type: FastAPI decides what to make of it
    assert not eligible(scope(content_type="text/plain"))
    assert not eligible(scope(content_type="application/json", idempotency_key="k"))
    assert not eligible(scope(path="/jobs/batch", content_type="application/json"))
    assert not eligible(scope(method="GET", content_type="application/json"))


def test_concurrent_posts_are_all_committed_and_published(api: Any, runtime: Any, db: Any) -> None:
    with ThreadPoolExecutor(16) as pool:
        responses = list(
            pool.map(
                lambda i: api.post("/jobs", json={"task": "echo", "payload": {"i": i}}), range(80)
            )
        )
    assert [r.status_code for r in responses] == [201] * 80
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 80
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM jobs")
        assert cur.fetchone()[0] == 80

    def unpublished() -> int:
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM jobs WHERE published_at IS NULL")
            return int(cur.fetchone()[0])

    wait_for(lambda: unpublished() == 0, what="every job confirmed published")
    received: set[str] = set()

    def drain() -> bool:
        received.update(str(m.job_id) for m in runtime.sqs.receive(10, 1))
        return received >= ids

    wait_for(drain, what="every job's message")
    assert received == ids


def test_keyed_and_plain_submissions_mix(api: Any) -> None:
    def post(i: int) -> Any:
        headers = {"Idempotency-Key": f"k-{i % 3}"} if i % 2 else {}
        return api.post("/jobs", json={"task": "echo", "payload": {"k": i % 3}}, headers=headers)

    with ThreadPoolExecutor(8) as pool:
        codes = [r.status_code for r in pool.map(post, range(30))]
    assert codes.count(201) == 15 + 3  # every plain one, and the first of each key
    assert codes.count(200) + codes.count(409) == 12


def test_submit_log_line_carries_the_request_trace_id(settings: Any, capsys: Any) -> None:
    import json

    from fastapi.testclient import TestClient

    from app.api.app import create_app

    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with TestClient(create_app(settings.model_copy(update={"log_format": "json"}))) as client:
        job = client.post(
            "/jobs",
            json={"task": "echo"},
            headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        ).json()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    submitted = [x for x in lines if x["event"] == "job submitted" and x["job_id"] == job["id"]]
    assert len(submitted) == 1 and submitted[0]["trace_id"] == trace


# -- Publisher -----------------------------------------------------------------------------------


class FakeSqs:
    """Records SendMessageBatch calls; accepts everything."""

    def __init__(self, latency: float = 0.0) -> None:
        self.calls: list[list[uuid.UUID]] = []
        self.latency = latency
        self.lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0

    def url_for(self, priority: str, queue: str = "default") -> str:
        return f"queue-{queue}-{priority}"

    def send_call(self, url: str, items: list[Outgoing]) -> list[uuid.UUID]:
        assert len(items) <= 10 and {self.url_for(i.priority, i.queue) for i in items} == {url}
        with self.lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        time.sleep(self.latency)
        with self.lock:
            self.concurrent -= 1
            self.calls.append([i.job_id for i in items])
        return [i.job_id for i in items]


class FakeSessions:
    """Records the ids each confirming transaction marks published."""

    def __init__(self) -> None:
        self.marked: list[list[str]] = []

    def begin(self) -> Any:
        sessions = self

        class Txn:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                return None

            def execute(self, stmt: Any, params: dict[str, Any]) -> None:
                sessions.marked.append(list(params["ids"]))

        return Txn()


def test_publisher_lingers_to_fill_a_call_at_low_load() -> None:
    sqs, sessions = FakeSqs(), FakeSessions()
    publisher = Publisher(sqs, sessions, threads=1, linger_seconds=0.5)  # type: ignore[arg-type]
    publisher.start()
    ids = [uuid.uuid4() for _ in range(10)]
    try:
        for i in ids:
            publisher.publish(Outgoing(i))
            time.sleep(0.005)  # a trickle, slower than one call per id would need
        wait_for(lambda: sum(len(c) for c in sqs.calls) == 10, what="the ids sent")
    finally:
        publisher.stop()
    assert sqs.calls == [ids]  # one full call, not ten
    assert sorted(i for m in sessions.marked for i in m) == sorted(str(i) for i in ids)


def test_publisher_sends_a_burst_in_parallel_and_confirms_in_few_updates() -> None:
    sqs, sessions = FakeSqs(latency=0.01), FakeSessions()
    publisher = Publisher(sqs, sessions, threads=3, linger_seconds=0.005)  # type: ignore[arg-type]
    ids = [uuid.uuid4() for _ in range(1000)]
    for n, i in enumerate(ids):  # queued before the threads start: one burst
        publisher.publish(Outgoing(i, priority=("high", "default")[n % 2]))
    publisher.start()
    try:
        wait_for(lambda: sum(len(c) for c in sqs.calls) == 1000, what="the burst sent")
    finally:
        publisher.stop()
    assert sorted(i for c in sqs.calls for i in c) == sorted(ids)
    assert len(sqs.calls) == 100  # full calls of 10, per queue
    assert sqs.max_concurrent >= 2
    marked = [i for m in sessions.marked for i in m]
    assert sorted(marked) == sorted(str(i) for i in ids)
    assert len(sessions.marked) <= 10  # one UPDATE per many calls


def test_publisher_failures_leave_rows_to_the_dispatcher(caplog: Any) -> None:
    class DownSqs(FakeSqs):
        def send_call(self, url: str, items: list[Outgoing]) -> list[uuid.UUID]:
            with self.lock:
                self.calls.append([i.job_id for i in items])
            raise JobqError("queue unavailable")

    sqs, sessions = DownSqs(), FakeSessions()
    publisher = Publisher(sqs, sessions, threads=2, linger_seconds=0)  # type: ignore[arg-type]
    publisher.start()
    try:
        for _ in range(25):
            publisher.publish(Outgoing(uuid.uuid4()))
            time.sleep(0.002)  # the pace of arrivals, so the publisher makes many calls
        wait_for(lambda: sum(len(c) for c in sqs.calls) == 25, what="every id tried")
    finally:
        publisher.stop()
    assert sessions.marked == []  # nothing confirmed: the dispatcher re-sends them later
    warnings = [r for r in caplog.records if "publish failed" in r.getMessage()]
    assert len(sqs.calls) > 1 and len(warnings) == 1  # an outage logs once per 5 s, not per call


def test_dispatcher_leaves_overdue_rows_to_a_lagging_publisher(
    db: Any, settings: Any, runtime: Any
) -> None:
    from app.outbox.dispatcher import Dispatcher

    with db.cursor() as cur:
        cur.execute(
            """INSERT INTO jobs (id, task, max_attempts, updated_at)
               SELECT gen_random_uuid(), 'echo', 3, now() - interval '1 minute'
               FROM generate_series(1, 5)"""
        )
    lagging = True
    dispatcher = Dispatcher(
        runtime.sqs, runtime.sessions, after_seconds=1, interval_seconds=1, defer=lambda: lagging
    )
    assert dispatcher.run_once() == 0  # the publisher still holds them: no double send
    lagging = False
    assert dispatcher.run_once() == 5


def test_publisher_reports_lag_only_while_a_backlog_waits() -> None:
    sqs, sessions = FakeSqs(latency=0.005), FakeSessions()
    publisher = Publisher(sqs, sessions, threads=1, linger_seconds=0)  # type: ignore[arg-type]
    for _ in range(1000):  # more than one cycle takes
        publisher.publish(Outgoing(uuid.uuid4()))
    time.sleep(0.2)  # the backlog has waited 0.2 s when the collector starts
    assert not publisher.lagging(0.1)  # nothing taken yet: no lag measured
    publisher.start()
    try:
        wait_for(lambda: publisher.lagging(0.1), what="the lag to be seen")
        wait_for(lambda: sum(len(c) for c in sqs.calls) == 1000, what="the backlog sent")
        assert not publisher.lagging(0.1)
    finally:
        publisher.stop()


# -- jobq api --workers ---------------------------------------------------------------------------


def test_api_with_several_worker_processes(settings: Any, db: Any, tmp_path: Any) -> None:
    import signal
    import subprocess
    import sys

    import httpx

    from tests.helpers import ROOT, free_port, metric_value, settings_env, stop_process

    port = free_port()
    log = open(tmp_path / "api.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api", "--workers", "2"],
        env=settings_env(settings, HOST="127.0.0.1", PORT=str(port)),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: cleanup reaches uvicorn's children
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=60, what="the API's two processes")
        # A connection each, so both processes take some.
        close = {"Connection": "close"}
        codes = [
            httpx.post(url + "/jobs", json={"task": "echo"}, headers=close, timeout=10).status_code
            for _ in range(20)
        ]
        assert codes == [201] * 20

        def all_published() -> bool:
            with db.cursor() as cur:
                cur.execute("SELECT count(*) FROM jobs WHERE published_at IS NOT NULL")
                return int(cur.fetchone()[0]) == 20

        wait_for(all_published, what="every job published by the process that took it")
        for _ in range(5):  # each scrape on a new connection: any process may answer it
            text = httpx.get(url + "/metrics", headers={"Connection": "close"}, timeout=10).text
            assert metric_value(text, "jobq_jobs_created_total", task="echo") == 20, text[:2000]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        # The whole group: stopping only the supervisor would orphan the serving processes.
        stop_process(proc, group=True, grace=0)
        log.close()
    output = (tmp_path / "api.log").read_text()
    assert "Traceback" not in output, output
