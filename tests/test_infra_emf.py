"""Job metrics reach CloudWatch as Embedded Metric Format lines, and the alarms watch them.

A real `jobq worker` (real PostgreSQL + the suite's SQS server) runs a job that fails three
times, then settles a dead-letter message for it (as SQS moves one there after a crash loop;
an exhausted job's own message is deleted, not dead-lettered); its stdout must then carry EMF
lines that
* validate against the EMF document structure (a JSON Schema written here from AWS's
  specification, plus its rule that every dimension and metric is a member of the root), and
* feed the CloudFormation alarms on job metrics: same namespace, metric name and dimensions.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema

from app.observability import metrics
from app.observability.emf import EXPORTS, EmfExporter, cloudwatch_metrics
from app.sqs.queue import encode_body, make_sqs_client
from tests.helpers import start_worker_process, wait_for
from tests.test_deploy import load_template

# The CloudWatch units the specification allows.
UNITS = [
    *("Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes"),
    *("Gigabytes", "Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits"),
    *("Percent", "Count", "Bytes/Second", "Kilobytes/Second", "Megabytes/Second"),
    *("Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second"),
    *("Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None"),
]

# The EMF document structure (CloudWatch Embedded Metric Format specification): a root object
# with `_aws` metadata whose MetricDirectives name a namespace, dimension sets and metrics.
EMF_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "CloudWatchMetrics": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/$defs/directive"},
                },
            },
        }
    },
    "$defs": {
        "directive": {
            "type": "object",
            "required": ["Namespace", "Dimensions", "Metrics"],
            "additionalProperties": False,
            "properties": {
                "Namespace": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 256,
                    "pattern": "^[a-zA-Z0-9._#:/-]+$",
                },
                "Dimensions": {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 30,
                        "items": {"type": "string", "minLength": 1, "maxLength": 250},
                    },
                },
                "Metrics": {
                    "type": "array",
                    "maxItems": 100,
                    "items": {
                        "type": "object",
                        "required": ["Name"],
                        "additionalProperties": False,
                        "properties": {
                            "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Unit": {"enum": UNITS},
                            "StorageResolution": {"enum": [1, 60]},
                        },
                    },
                },
            },
        }
    },
}


def check_emf(doc: dict[str, Any]) -> None:
    """Fail unless `doc` is a valid EMF document (schema plus the target-member rules)."""
    jsonschema.Draft202012Validator(EMF_SCHEMA).validate(doc)
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(doc.get(key), str), f"dimension {key} is no string member"
        for metric in directive["Metrics"]:
            value = doc.get(metric["Name"])
            values = value if isinstance(value, list) else [value]
            assert 0 < len(values) <= 100, metric["Name"]
            assert all(isinstance(v, int | float) for v in values), (metric["Name"], value)


def emf_lines(text: str) -> list[dict[str, Any]]:
    """The EMF documents among a process's stdout lines (JSON logs are the other lines)."""
    docs = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def emitted(docs: list[dict[str, Any]]) -> dict[tuple[str, str, frozenset[Any]], float]:
    """(namespace, metric, {(dimension, value)}) -> sum of the values CloudWatch would store."""
    totals: dict[tuple[str, str, frozenset[Any]], float] = {}
    for doc in docs:
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for dimension_set in directive["Dimensions"]:
                dims = frozenset((k, doc[k]) for k in dimension_set)
                for metric in directive["Metrics"]:
                    key = (directive["Namespace"], metric["Name"], dims)
                    totals[key] = totals.get(key, 0.0) + float(doc[metric["Name"]])
    return totals


def emf_alarms() -> dict[str, dict[str, Any]]:
    """The template's alarms on the namespace the containers send EMF to."""
    resources = load_template()["Resources"]
    container = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    return {
        name: r["Properties"]
        for name, r in resources.items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Namespace") == env["JOBQ_EMF_NAMESPACE"]
    }


def test_containers_send_emf_that_the_alarms_read() -> None:
    resources = load_template()["Resources"]
    for td in ("ApiTaskDefinition", "WorkerTaskDefinition"):
        container = resources[td]["Properties"]["ContainerDefinitions"][0]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert float(env["JOBQ_EMF_INTERVAL_SECONDS"]) > 0, td
        assert env["JOBQ_EMF_ENVIRONMENT"] == {"Ref": "EnvironmentName"}, td
        assert container["LogConfiguration"]["LogDriver"] == "awslogs", "EMF rides on the logs"
    alarms = emf_alarms()
    assert {"FailedJobsAlarm", "DeadLetterArrivalsAlarm"} <= set(alarms)
    exported = cloudwatch_metrics()
    assert len(exported) >= len(EXPORTS), "every exported family is registered"
    for name, alarm in alarms.items():
        assert alarm["MetricName"] in exported, f"{name}: {alarm['MetricName']} is never sent"
        dims = {d["Name"] for d in alarm["Dimensions"]}
        sets = [{"Environment", *s} for s in exported[alarm["MetricName"]].dimensions]
        assert dims in sets, f"{name}: dimensions {dims} are none of the sent sets {sets}"
        assert {"Name": "Environment", "Value": {"Ref": "EnvironmentName"}} in alarm["Dimensions"]


def test_worker_writes_emf_lines_for_failures_and_dlq_arrivals(
    api: Any, settings: Any, procs_dir: Path
) -> None:
    log_path = procs_dir / "worker.log"
    worker = start_worker_process(
        settings,
        log_path,
        JOBQ_EMF_INTERVAL_SECONDS="0.2",
        JOBQ_EMF_NAMESPACE="jobq",
        JOBQ_EMF_ENVIRONMENT="ci",
    )
    try:
        job = api.post("/jobs", json={"task": "fail", "payload": {"message": "boom"}}).json()
        wait_for(
            lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "failed",
            timeout=60,
            what="the failing job to use up its attempts",
        )
        make_sqs_client(settings).send_message(
            QueueUrl=settings.sqs_dlq_url, MessageBody=encode_body(uuid.UUID(job["id"]))
        )
        wait_for(
            lambda: "jobq_dlq_arrivals_total" in log_path.read_text(),
            timeout=60,
            what="an EMF line counting the DLQ arrival",
        )
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    assert api.get(f"/jobs/{job['id']}").json()["status"] == "failed"
    docs = emf_lines(log_path.read_text())
    assert docs, "no EMF lines on the worker's stdout"
    for doc in docs:
        check_emf(doc)
    totals = emitted(docs)
    env = ("Environment", "ci")
    finished_failed = frozenset({env, ("status", "failed")})
    assert totals[("jobq", "jobq_jobs_finished_total", finished_failed)] == 1
    assert totals[("jobq", "jobq_jobs_finished_total", finished_failed | {("task", "fail")})] == 1
    assert totals[("jobq", "jobq_jobs_retried_total", frozenset({env}))] == 2
    assert totals[("jobq", "jobq_job_duration_seconds_count", frozenset({env}))] == 3
    assert totals[("jobq", "jobq_dlq_arrivals_total", frozenset({env}))] == 1
    assert ("jobq", "jobq_jobs_in_flight", frozenset({env})) in totals

    # Each alarm on job metrics reads a series these lines create (its namespace, name and
    # dimensions, with Environment set to the stack's name: "ci" here).
    for name, alarm in emf_alarms().items():
        dims = frozenset(
            (d["Name"], "ci" if d["Value"] == {"Ref": "EnvironmentName"} else d["Value"])
            for d in alarm["Dimensions"]
        )
        assert (alarm["Namespace"], alarm["MetricName"], dims) in totals, name


def test_exporter_sends_increments_once_and_gauges_only_from_workers() -> None:
    lines: list[str] = []
    api = EmfExporter(
        namespace="jobq", environment="t", service="api", interval=60, write=lines.append
    )
    worker = EmfExporter(
        namespace="jobq", environment="t", service="worker", interval=60, write=lines.append
    )
    api.flush(), worker.flush()  # what the process counted before this test
    lines.clear()
    metrics.JOBS_CREATED.labels("emf-probe").inc(3)
    api.flush()
    assert [d["jobq_jobs_created_total"] for d in emf_lines("".join(lines))] == [3]
    lines.clear()
    api.flush()
    assert lines == [], "an unchanged counter sends nothing, and the API sends no gauge"
    worker.flush()  # sends the same 3 (each process has one exporter) and the gauge
    docs = emf_lines("".join(lines))
    assert [d.get("jobq_jobs_created_total") for d in docs if "task" in d] == [3]
    (gauge,) = [d for d in docs if "task" not in d]
    assert set(gauge) == {"Environment", "_aws", "jobq_jobs_in_flight"}
    for doc in docs:
        check_emf(doc)
