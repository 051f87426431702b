"""Priorities: one queue each, all run, and the worker's weighted order does not starve any."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.conftest import make_settings
from tests.helpers import queue_depth, wait_for, wait_for_status
from worker.consumer import weighted_order


def test_priorities_go_to_their_own_queues_and_all_run(
    database_url: str, sqs_endpoint: str, db: Any, worker_factory: Any
) -> None:
    base = make_settings(database_url, sqs_endpoint)
    high = make_settings(database_url, sqs_endpoint).sqs_queue_url
    low = make_settings(database_url, sqs_endpoint).sqs_queue_url
    settings = base.model_copy(update={"sqs_high_queue_url": high, "sqs_low_queue_url": low})
    with TestClient(create_app(settings)) as api:
        ids = {
            p: api.post("/jobs", json={"task": "echo", "priority": p}).json()["id"]
            for p in ("high", "default", "low")
        }
        sqs = api.app.state.runtime.sqs
        for url in (high, base.sqs_queue_url, low):
            wait_for(
                lambda u=url: queue_depth(sqs, u)["visible"] == 1,
                what=f"one message on {url}",
            )
        worker_factory(settings)
        for job_id in ids.values():
            wait_for_status(api, job_id, "succeeded")
        assert api.get(f"/jobs/{ids['high']}").json()["priority"] == "high"


def test_weighted_order_prefers_heavy_queues_without_starving_light_ones() -> None:
    queues = [("high", 6), ("default", 3), ("low", 1)]
    firsts = [weighted_order(queues, rnd=lambda i=i: i / 100)[0] for i in range(100)]
    assert firsts.count("high") == 60 and firsts.count("default") == 30
    assert firsts.count("low") == 10
    assert sorted(weighted_order(queues)) == ["default", "high", "low"]
    assert weighted_order([("a", 0), ("b", 1)]) == ["b"]
