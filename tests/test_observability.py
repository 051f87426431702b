"""Metrics, stats and structured logs with a trace id that crosses SQS."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, metric_value, start_worker_process, wait_for


def test_api_metrics_count_jobs_http_and_sample_queues(api: Any) -> None:
    api.post("/jobs", json={"task": "echo"})
    api.post("/jobs", json={"task": "nope"})
    api.get("/jobs/not-a-uuid")
    text = api.get("/metrics").text
    assert metric_value(text, "jobq_jobs_created_total", task="echo") >= 1
    http = "jobq_http_requests_total"
    assert metric_value(text, http, method="POST", route="/jobs", status="201") >= 1
    assert metric_value(text, http, method="GET", route="/jobs/{job_id}", status="422") >= 1
    assert "jobq_http_request_duration_seconds_bucket" in text
    assert "jobq_queue_depth{" in text and "jobq_dlq_depth " in text
    assert metric_value(text, "jobq_oldest_queued_job_age_seconds") >= 0


def test_stats_reports_counts_depths_throughput_and_failures(api: Any, worker_factory: Any) -> None:
    worker_factory()
    ok = api.post("/jobs", json={"task": "echo"}).json()
    bad = api.post("/jobs", json={"task": "permanent"}).json()
    wait_for(
        lambda: (
            api.get(f"/jobs/{ok['id']}").json()["status"] == "succeeded"
            and api.get(f"/jobs/{bad['id']}").json()["status"] == "failed"
        ),
        what="both jobs to finish",
    )
    stats = api.get("/stats").json()
    assert stats["by_status"] == {"succeeded": 1, "failed": 1}
    assert stats["by_task"]["permanent"] == {"failed": 1}
    assert stats["throughput"]["finished"] == 2
    assert stats["recent_failures"][0]["id"] == bad["id"]
    assert "can never work" in stats["recent_failures"][0]["error"]
    assert set(stats["dlq"]) == {"visible", "in_flight", "delayed"}
    assert all(v is not None for v in stats["queues"].values())


def test_worker_metrics_and_json_logs_carry_the_trace_id(
    api: Any, settings: Any, procs_dir: Path
) -> None:
    port = free_port()
    log_path = procs_dir / "worker.log"
    worker = start_worker_process(settings, log_path, JOBQ_METRICS_PORT=str(port))
    try:
        trace = "0af7651916cd43dd8448eb211c80319c"
        job = api.post(
            "/jobs",
            json={"task": "flaky", "payload": {"failures": 1}},
            headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"},
        )
        assert job.headers["x-trace-id"] == trace
        job_id = job.json()["id"]
        wait_for(
            lambda: api.get(f"/jobs/{job_id}").json()["status"] == "succeeded",
            what="the job to succeed",
        )

        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = wait_for(
            lambda: "jobq_jobs_finished_total{" in (t := scrape()) and t,
            what="worker metrics",
        )
        assert metric_value(text, "jobq_jobs_finished_total", task="flaky", status="succeeded") == 1
        assert metric_value(text, "jobq_jobs_retried_total", task="flaky") == 1
        assert metric_value(text, "jobq_job_duration_seconds_count", task="flaky") == 2
        assert metric_value(text, "jobq_job_queue_wait_seconds_count", task="flaky") == 1
        assert metric_value(text, "jobq_jobs_in_flight") == 0
    finally:
        worker.terminate()
        worker.wait(30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    about_job = [line for line in lines if line.get("job_id") == job_id]
    assert {"job started", "job retrying", "job succeeded"} <= {x["event"] for x in about_job}
    for line in about_job:
        assert line["trace_id"] == trace
        assert {"ts", "level", "event", "task", "attempt"} <= set(line)


def test_opentelemetry_spans_follow_the_job_across_sqs(api: Any, worker_factory: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from app.observability import otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert otel.configure(provider)
    try:
        worker_factory()
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        job = api.post(
            "/jobs",
            json={"task": "echo"},
            headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        ).json()
        wait_for(
            lambda: (
                {"jobq.submit", "jobq.publish", "jobq.execute"}
                <= {s.name for s in exporter.get_finished_spans()}
            ),
            what="submit, publish and execute spans",
        )
        spans = {s.name: s for s in exporter.get_finished_spans()}
        for name in ("jobq.submit", "jobq.publish", "jobq.execute"):
            assert format(spans[name].context.trace_id, "032x") == trace, name
        assert spans["jobq.execute"].attributes["jobq.job_id"] == job["id"]
    finally:
        otel.disable()
