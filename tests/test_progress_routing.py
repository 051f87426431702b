"""Progress reports (sync and async handlers) and routing to named queues."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import jobq
from app.config import Settings
from app.sqs.queue import ensure_queues, make_sqs_client
from tests.helpers import wait_for


@pytest.mark.parametrize("task", ["report_progress", "async_report_progress"])
def test_progress_is_visible_while_running_and_kept_after(
    task: str, settings: Settings, live_api: str, worker_factory: Any
) -> None:
    worker_factory()
    with jobq.Client(live_api) as client:
        job = client.submit(task, {"hold": 2})
        running = wait_for(
            lambda: (j := client.get(job)).progress is not None and j,
            timeout=20,
            what="a progress report",
        )
        assert running.status == jobq.JobStatus.RUNNING
        assert running.progress in (0.5, 0.25)
        assert running.progress_message in ("step 100", "a quarter")
        assert running.progress_at is not None
        done = client.wait(job, timeout=30)
        assert done.status == jobq.JobStatus.SUCCEEDED
        assert done.progress == running.progress


def test_progress_out_of_range_is_refused() -> None:
    ctx = jobq.JobContext(uuid.uuid4(), "t", 1, 3)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ctx.progress(bad)
    ctx.progress(1, "x" * 5000)
    assert ctx.take_progress() == (1.0, "x" * 1000)
    assert ctx.take_progress() is None


@pytest.fixture
def routed(settings: Settings) -> Settings:
    """Settings with a second SQS queue, named "media"."""
    name = f"jobq-test-media-{uuid.uuid4().hex[:8]}"
    url, _ = ensure_queues(
        make_sqs_client(settings), name, f"{name}-dlq", max_receive_count=4, visibility_timeout=10
    )
    return settings.model_copy(update={"queue_urls_map": f"media={url}"})


def test_named_queue_jobs_run_only_on_workers_serving_it(
    routed: Settings, worker_factory: Any, db: Any
) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    media = worker_factory(routed, queues="media")
    plain = worker_factory(routed)  # JOBQ_QUEUES defaults to "default"
    with TestClient(create_app(routed)) as api:
        declared = api.post("/jobs", json={"task": "media_echo"}).json()
        asked = api.post("/jobs", json={"task": "echo", "queue": "media"}).json()
        default = api.post("/jobs", json={"task": "echo"}).json()
        assert declared["queue"] == asked["queue"] == "media" and default["queue"] == "default"
        refused = api.post("/jobs", json={"task": "echo", "queue": "video"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "queue"
        ids = [declared["id"], asked["id"], default["id"]]

        def succeeded() -> list[dict[str, Any]] | None:
            found = [api.get(f"/jobs/{i}").json() for i in ids]
            return found if all(j["status"] == "succeeded" for j in found) else None

        final = wait_for(
            succeeded,
            timeout=30,
            what="all three jobs to succeed",
        )
        # /stats (and the dashboard's queues page) sample the named queue's SQS queue too.
        media_queue = routed.named_queue_urls["media"].rsplit("/", 1)[1]

        def media_sampled() -> bool:
            return api.get("/stats").json()["queues"].get(media_queue) is not None

        wait_for(media_sampled, timeout=30, what="the media queue's depth in /stats")
    with db.cursor() as cur:
        cur.execute("SELECT id::text, worker_id FROM jobs")
        by = dict(cur.fetchall())
    assert by[declared["id"]] == by[asked["id"]] == media.worker_id
    assert by[default["id"]] == plain.worker_id
    assert [j["queue"] for j in final] == ["media", "media", "default"]
