"""jobq.AsyncClient against the real API: the same surface as Client, on asyncio.

pytest-asyncio is not a dependency: each test runs its coroutine with asyncio.run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

import jobq
from jobq import AsyncClient, JobStatus
from tests.sdk_support import AsyncTransport, Faults, job_count, posts_to


def _client(url: str, faults: Faults | None = None, **options: Any) -> tuple[AsyncClient, Faults]:
    transport = AsyncTransport(faults)
    return AsyncClient(url, transport=transport, **options), transport.faults


def test_submit_and_wait(live_api: str, worker_factory: Any, db: Any) -> None:
    worker_factory()

    async def main() -> None:
        client, sent = _client(live_api)
        async with client:
            job = await client.submit("sleep", {"seconds": 1.5})
            done = await client.wait(job.id, timeout=60)
            returned = datetime.now(UTC)
        assert done.status == JobStatus.SUCCEEDED and done.result == {"slept": 1.5}
        assert len(sent.calls("GET", f"/jobs/{job.id}")) == 1
        assert done.finished_at is not None
        assert (returned - done.finished_at).total_seconds() < 3

    asyncio.run(main())
    assert job_count(db) == 1


def test_many_concurrent_waits_share_the_listener(live_api: str, worker_factory: Any) -> None:
    async def main() -> list[jobq.Job]:
        async with AsyncClient(live_api) as client:
            batch = await client.submit_many(
                [{"task": "echo", "payload": {"i": i}} for i in range(20)]
            )
            waiting = asyncio.gather(*(client.wait(j, timeout=60) for j in batch.jobs))
            # The worker starts while the long polls go out (most are held by the server
            # when their jobs end); every one is answered with its final job.
            await asyncio.to_thread(worker_factory)
            return list(await waiting)

    done = asyncio.run(main())
    assert len(done) == 20 and {j.status for j in done} == {JobStatus.SUCCEEDED}
    assert sorted(j.result["i"] for j in done) == list(range(20))


def test_typed_errors(live_api: str) -> None:
    async def main() -> None:
        client, _ = _client(live_api)
        with pytest.raises(jobq.NotFound) as missing:
            await client.get(uuid.uuid4())
        assert missing.value.status == 404
        with pytest.raises(jobq.InvalidInput) as unknown:
            await client.submit("no-such-task")
        assert unknown.value.field == "task"
        job = await client.submit("echo")
        await client.cancel(job)
        with pytest.raises(jobq.Conflict):
            await client.cancel(job)
        with pytest.raises(jobq.WaitTimeout):
            await client.wait(await client.submit("echo"), timeout=0.5)
        await client.aclose()

    asyncio.run(main())


def test_a_lost_response_is_retried_without_a_second_job(live_api: str, db: Any) -> None:
    async def main() -> tuple[jobq.Job, Faults]:
        client, sent = _client(live_api, Faults(drop=posts_to("/jobs")))
        async with client:
            return await client.submit("echo", {"n": 1}), sent

    job, sent = asyncio.run(main())
    bodies = sent.bodies("/jobs")
    assert len(bodies) == 2 and bodies[0]["idempotency_key"] == bodies[1]["idempotency_key"]
    assert job_count(db) == 1


def test_unavailable_is_retried_after_retry_after(live_api: str, db: Any) -> None:
    async def main() -> float:
        faults = Faults(refuse=posts_to("/jobs"), refusal=(503, {"Retry-After": "1"}))
        client, sent = _client(live_api, faults)
        started = time.monotonic()
        await client.submit("echo")
        assert len(sent.calls("POST", "/jobs")) == 2
        return time.monotonic() - started

    assert asyncio.run(main()) >= 1.0
    assert job_count(db) == 1


def test_list_is_an_async_iterator_following_next_cursor(live_api: str) -> None:
    async def main() -> None:
        client, sent = _client(live_api)
        made = (await client.submit_many([{"task": "echo"} for _ in range(5)])).jobs
        listed = [j.id async for j in client.list(task="echo", page_size=2)]
        assert sorted(listed) == sorted(j.id for j in made)
        assert len(sent.calls("GET", "/jobs")) == 3
        assert [a async for a in client.list(status="failed")] == []
        assert await client.attempts(made[0]) == []
        assert (await client.stats())["by_status"]["queued"] == 5

    asyncio.run(main())
