"""jobq.Client against the real API (uvicorn on 127.0.0.1, PostgreSQL, SQS, a worker)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import jobq
from app.api.app import create_app
from app.jobs.schemas import AttemptOut, JobOut
from jobq import Client, JobRequest, JobStatus
from jobq.errors import retry_after
from tests.helpers import ROOT, serve
from tests.sdk_support import Faults, Transport, job_count, posts_to

SUBMIT_KEY = "sdk-submit-key-0123456789abcdef"
READ_KEY = "sdk-read-key-0123456789abcdef"


def _client(url: str, faults: Faults | None = None, **options: Any) -> tuple[Client, Faults]:
    transport = Transport(faults)
    return Client(url, transport=transport, **options), transport.faults


def test_the_sdk_imports_none_of_the_servers_machinery() -> None:
    code = (
        "import sys, jobq, jobq.client\n"
        "heavy = {'sqlalchemy', 'fastapi', 'starlette', 'boto3', 'botocore', 'psycopg2'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_models_mirror_the_api_schemas() -> None:
    assert set(jobq.Job.model_fields) == set(JobOut.model_fields)
    assert set(jobq.Attempt.model_fields) == set(AttemptOut.model_fields)


def test_submit_and_wait_makes_one_request_and_returns_when_the_job_ends(
    live_api: str, worker_factory: Any, db: Any
) -> None:
    worker_factory()
    client, sent = _client(live_api)
    with client:
        job = client.submit("sleep", {"seconds": 1.5}, priority="high", max_attempts=2)
        assert job.status == JobStatus.QUEUED and job.priority == "high" and job.max_attempts == 2
        assert job.idempotency_key and job.idempotency_key.startswith("jobq-sdk-")
        done = client.wait(job.id, timeout=60)
        returned = datetime.now(UTC)
    assert done.status == JobStatus.SUCCEEDED and done.final and done.result == {"slept": 1.5}
    polls = sent.calls("GET", f"/jobs/{job.id}")
    assert len(polls) == 1 and polls[0].url.params["wait"] == "30.000"
    assert done.finished_at is not None
    assert (returned - done.finished_at).total_seconds() < 3  # woken, not the 30 s poll
    assert job_count(db) == 1


def test_wait_times_out_with_the_job_as_last_seen(live_api: str) -> None:
    client, sent = _client(live_api)
    job = client.submit("echo")
    started = time.monotonic()
    with pytest.raises(jobq.WaitTimeout) as caught:
        client.wait(job, timeout=1.5)
    assert time.monotonic() - started >= 1.4
    assert caught.value.job.id == job.id and caught.value.job.status == JobStatus.QUEUED
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, jobq.ApiError)
    assert len(sent.calls("GET", f"/jobs/{job.id}")) == 1


def test_typed_errors(live_api: str, worker_factory: Any) -> None:
    client, _ = _client(live_api)
    with pytest.raises(jobq.NotFound) as missing:
        client.get(uuid.uuid4())
    assert missing.value.status == 404 and missing.value.field == "id"
    with pytest.raises(jobq.InvalidInput) as unknown:
        client.submit("no-such-task")
    assert unknown.value.status == 422 and unknown.value.field == "task"
    assert str(unknown.value).startswith("422 invalid_input: ")
    with pytest.raises(jobq.InvalidInput) as both:
        client.submit("echo", delay_seconds=5, run_at=datetime.now(UTC) + timedelta(hours=1))
    assert both.value.field == "run_at"
    with pytest.raises(jobq.InvalidInput) as local:
        client.submit("echo", priority="urgent")  # type: ignore[typeddict-item]
    assert local.value.field == "priority" and local.value.status is None  # caught before sending
    worker_factory()
    finished = client.wait(client.submit("echo"), timeout=60)
    with pytest.raises(jobq.Conflict) as conflict:
        client.cancel(finished)
    assert conflict.value.status == 409 and conflict.value.field == "status"
    with pytest.raises(jobq.Conflict):
        client.retry(finished)
    with pytest.raises(jobq.Conflict) as reused:
        client.submit("echo", {"a": 1}, idempotency_key="mine")
        client.submit("echo", {"a": 2}, idempotency_key="mine")
    assert reused.value.field == "idempotency_key"


def test_unauthorized_and_forbidden(settings: Any) -> None:
    keys = f"ci:submit:{SUBMIT_KEY},viewer:read:{READ_KEY}"
    secured = settings.model_copy(update={"auth": "required", "api_keys": keys})
    with serve(create_app(secured)) as url:
        with pytest.raises(jobq.Unauthorized) as nokey:
            Client(url, api_key="").get(uuid.uuid4())
        assert nokey.value.status == 401 and nokey.value.field == "Authorization"
        with pytest.raises(jobq.Forbidden) as readonly:
            Client(url, api_key=READ_KEY).submit("echo")
        assert readonly.value.status == 403 and isinstance(readonly.value, jobq.Unauthorized)
        job = Client(url, api_key=SUBMIT_KEY).submit("echo")
        assert Client(url, api_key=READ_KEY).get(job.id).id == job.id


def test_rate_limited_carries_retry_after_and_is_retried(settings: Any) -> None:
    limited = settings.model_copy(update={"submit_rate": 1.0, "submit_burst": 1})
    with serve(create_app(limited)) as url:
        eager, _ = _client(url, max_retries=0)
        eager.submit("echo")
        with pytest.raises(jobq.RateLimited) as caught:
            eager.submit("echo")
        assert caught.value.status == 429 and caught.value.retry_after == 1.0
        patient, sent = _client(url)
        started = time.monotonic()
        patient.submit("echo")
        patient.submit("echo")  # refused, then sent again after Retry-After
        # The bucket is per client address, shared with `eager`: at least one refusal.
        assert len(sent.calls("POST", "/jobs")) >= 3
        assert time.monotonic() - started >= 0.9


def test_unavailable_is_retried_after_retry_after(live_api: str, db: Any) -> None:
    faults = Faults(refuse=posts_to("/jobs"), refusal=(503, {"Retry-After": "1"}), refusals=1)
    client, sent = _client(live_api, faults)
    started = time.monotonic()
    job = client.submit("echo")
    assert time.monotonic() - started >= 1.0
    assert len(sent.calls("POST", "/jobs")) == 2 and job_count(db) == 1 and job.task == "echo"
    hopeless, _ = _client(live_api, Faults(refuse=posts_to("/jobs"), refusals=99), max_retries=1)
    with pytest.raises(jobq.Unavailable) as caught:
        hopeless.submit("echo")
    assert caught.value.status == 503 and caught.value.retry_after == 1.0


def test_a_lost_response_is_retried_without_a_second_job(live_api: str, db: Any) -> None:
    client, sent = _client(live_api, Faults(drop=posts_to("/jobs")))
    job = client.submit("echo", {"n": 1})
    bodies = sent.bodies("/jobs")
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the same generated key, twice
    assert bodies[0]["idempotency_key"] == job.idempotency_key
    assert job_count(db) == 1
    with db.cursor() as cur:
        cur.execute("SELECT id FROM jobs")
        assert cur.fetchone()[0] == str(job.id)


def test_without_a_key_a_lost_response_is_not_sent_again(live_api: str, db: Any) -> None:
    client, sent = _client(live_api, Faults(drop=posts_to("/jobs")), auto_idempotency=False)
    with pytest.raises(jobq.Unreachable, match="cannot reach the API"):
        client.submit("echo")
    assert len(sent.calls("POST", "/jobs")) == 1 and job_count(db) == 1


def test_connection_refused_is_retried_then_raised() -> None:
    client, sent = _client("http://127.0.0.1:9", max_retries=2, backoff=0.01)
    with pytest.raises(jobq.Unreachable) as caught:
        client.get(uuid.uuid4())
    assert len(sent.sent) == 3 and caught.value.status is None
    assert "cannot reach the API at http://127.0.0.1:9" in str(caught.value)


def test_submit_many_is_one_request_with_per_item_results(live_api: str, db: Any) -> None:
    client, sent = _client(live_api, Faults(drop=posts_to("/jobs/batch")))
    items: list[Any] = [JobRequest(task="echo"), {"task": "no-such-task"}, {"task": "echo"}]
    result = client.submit_many(items)
    assert len(sent.calls("POST", "/jobs/batch")) == 2  # the first answer was lost
    # The retry found the jobs the lost answer had created: nothing was created twice.
    assert (result.created, result.existing, result.errors) == (0, 2, 1)
    assert result.items[1].error is not None and result.items[1].error.field == "jobs.1.task"
    assert [j.task for j in result.jobs] == ["echo", "echo"] and job_count(db) == 2
    with pytest.raises(jobq.InvalidInput) as atomic:
        client.submit_many(items, atomic=True)
    assert atomic.value.field == "jobs.1.task" and job_count(db) == 2
    with pytest.raises(jobq.InvalidInput) as local:
        client.submit_many([{"task": "echo"}, {"task": "echo", "payload": [1]}])
    assert local.value.field == "jobs.1.payload"


def test_list_follows_next_cursor(live_api: str) -> None:
    client, sent = _client(live_api)
    made = client.submit_many([{"task": "echo", "payload": {"i": i}} for i in range(7)]).jobs
    client.submit("flaky", {"failures": 0})
    listed = list(client.list(task="echo", page_size=3))
    newest_first = sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
    assert [j.id for j in listed] == [j.id for j in newest_first]  # (created_at, id) order
    assert len(sent.calls("GET", "/jobs")) == 3
    first_two = list(itertools.islice(client.list(page_size=2), 2))
    assert len(first_two) == 2 and len(sent.calls("GET", "/jobs")) == 4  # lazily paged
    assert [j.task for j in client.list(status="queued", task="flaky")] == ["flaky"]
    assert list(client.list(created_after=datetime.now(UTC) + timedelta(hours=1))) == []


def test_attempts_retry_and_stats(live_api: str, worker_factory: Any) -> None:
    worker_factory()
    client = Client(live_api)
    flaky = client.wait(client.submit("flaky", {"failures": 1}), timeout=60)
    assert flaky.status == JobStatus.SUCCEEDED and flaky.attempts == 2
    assert [a.outcome for a in client.attempts(flaky)] == ["failed", "succeeded"]
    failed = client.wait(client.submit("permanent"), timeout=60)
    assert failed.status == JobStatus.FAILED and "never work" in (failed.error or "")
    again = client.retry(failed.id)
    assert again.id == failed.id and again.status == JobStatus.QUEUED
    assert client.wait(again, timeout=60).status == JobStatus.FAILED
    assert len(client.attempts(str(failed.id))) == 2
    assert client.stats()["by_status"]["succeeded"] == 1


def test_cancel_a_queued_job(live_api: str) -> None:
    client = Client(live_api)
    job = client.submit("echo", delay_seconds=3600)
    assert job.status == JobStatus.SCHEDULED and job.run_at is not None
    cancelled = client.cancel(job)
    assert cancelled.status == JobStatus.CANCELLED
    assert client.wait(job, timeout=5).status == JobStatus.CANCELLED


def test_url_and_key_from_the_environment(settings: Any, monkeypatch: Any) -> None:
    secured = settings.model_copy(
        update={"auth": "required", "api_keys": f"ci:submit:{SUBMIT_KEY}"}
    )
    with serve(create_app(secured)) as url:
        monkeypatch.setenv("JOBQ_API_URL", url + "/")
        monkeypatch.setenv("JOBQ_API_KEY", SUBMIT_KEY)
        with Client() as client:
            assert client.base_url == url
            assert client.submit("echo").task == "echo"
        with pytest.raises(jobq.Unauthorized):
            Client(api_key="wrong-key-0123456789").get(uuid.uuid4())


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after({"retry-after": "Thu, 01 Jan 2026 12:00:07 GMT"}, now) == 7
    assert retry_after({"retry-after": "Thu, 01 Jan 2026 11:00:00 GMT"}, now) == 0
    assert retry_after({"retry-after": "3"}, now) == 3
    assert retry_after({"retry-after": "soon"}, now) is None
    assert retry_after({}, now) is None
