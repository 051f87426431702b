"""The POST /jobs fast path: concurrent submissions committed together (GroupCommit), answers
built without reading the row back."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.errors import DatabaseUnavailable
from app.jobs.service import GroupCommit
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
