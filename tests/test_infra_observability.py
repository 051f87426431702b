"""Prometheus rules and the Grafana dashboard: valid, able to fire, and about real metrics.

* `promtool check rules` and `promtool test rules` (Debian's `prometheus` package) on
  infra/prometheus/alerts.yml and its unit tests; `promtool check config` on the example config;
* every metric name in an alert expression or a dashboard query is one that the real API's
  /metrics or a real worker's metrics port exports (histograms as _bucket/_sum/_count), apart
  from a short, named list of series that Prometheus or kube-state-metrics write;
* each CloudWatch alarm in infra/jobq.yaml has its Prometheus alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import free_port, start_worker_process, wait_for
from tests.test_deploy import load_template

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "infra" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "jobq.json"

# Series in the rules that jobq does not export, and who writes them.
EXTERNAL = {
    "up": "Prometheus itself, for every scrape target",
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
}

# CloudWatch alarm (infra/jobq.yaml) -> the Prometheus alert for the same condition.
SAME_ALARMS = {
    "FailedJobsAlarm": "JobqFailedJobs",
    "DeadLetterArrivalsAlarm": "JobqDeadLetterArrivals",
    "DeadLetterQueueDepthAlarm": "JobqDeadLetterQueueNotDraining",
    "Api5xxAlarm": "JobqApi5xx",
    "UnhealthyApiTargetsAlarm": "JobqApiTargetDown",
    "WorkersAtMaxAlarm": "JobqWorkersAtMax",
    "OldestMessageAgeAlarm": "JobqOldestJobAge",
}

# Grafana's own variables are not PromQL: give them a value before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str, cwd: Path = PROMETHEUS) -> str:
    """Run promtool; fail (never skip) when Debian's prometheus package is missing."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: apt-get install prometheus (make test installs it)")
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def selector_names(expr: str) -> set[str]:
    """Metric names of every vector selector in a PromQL expression (parsed, not grepped)."""
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name or next(
                (m.value for m in node.matchers.matchers if m.name == "__name__"), None
            )
            assert name, f"a selector without a metric name in {expr!r}"
            names.add(name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name an exposition can hold, from its families' types (even unsampled)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
        names.update(sample.name for sample in family.samples)
    return names


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


# --------------------------------------------------------------------------- promtool


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_every_alert_fires_in_promtool_unit_tests() -> None:
    promtool("test", "rules", "alerts.test.yml")
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text(encoding="utf-8"))
    firing = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == set(alert_rules()), "each alert needs a unit test in which it fires"


def test_promtool_checks_the_example_config() -> None:
    promtool("check", "config", "--syntax-only", "prometheus.yml")
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["alerts.yml"]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"jobq-api", "jobq-worker"}


def test_each_cloudwatch_alarm_has_its_prometheus_alert() -> None:
    alarms = {
        name
        for name, resource in load_template()["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert alarms == set(SAME_ALARMS), "map every CloudWatch alarm to its Prometheus alert"
    assert set(SAME_ALARMS.values()) == set(alert_rules())


# --------------------------------------------------------------------------- metric names


def test_rules_and_dashboard_use_only_exported_metrics(
    api: Any, settings: Any, tmp_path: Path
) -> None:
    port = free_port()
    worker = start_worker_process(settings, tmp_path / "worker.log", JOBQ_METRICS_PORT=str(port))
    try:
        worker_text = wait_for(
            lambda: (text := _scrape(f"http://127.0.0.1:{port}/metrics")) and text,
            what="the worker's metrics port",
        )
    finally:
        worker.terminate()
        worker.wait(30)
    api_text = api.get("/metrics").text
    worker_names, api_names = exported_names(worker_text), exported_names(api_text)
    # Each side exports its own: the sampled queue gauges come from the API only.
    assert "jobq_jobs_in_flight" in worker_names and "jobq_dlq_arrivals_total" in worker_names
    assert "jobq_queue_depth" in api_names and "jobq_queue_depth" not in worker_names
    exported = worker_names | api_names

    used: dict[str, set[str]] = {}
    for alert, rule in alert_rules().items():
        for name in selector_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {alert}")
    for title, expr in dashboard_queries():
        for name in selector_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")

    unknown = {n: sorted(w) for n, w in used.items() if n not in exported and n not in EXTERNAL}
    assert not unknown, f"metrics that neither the API nor the worker exports: {unknown}"
    assert set(EXTERNAL) <= set(used), "drop EXTERNAL entries no rule uses any more"
    assert {"jobq_dlq_arrivals_total", "jobq_job_duration_seconds_bucket"} <= set(used)


def test_selector_names_parses_rather_than_greps() -> None:
    expr = (
        "histogram_quantile(0.9, sum by (le, route)"
        ' (rate(a_bucket{route!~"x|y"}[$__rate_interval])))'
        ' / on (route) group_left {__name__="b_total", job="j"} > bool 3'
    )
    assert selector_names(expr) == {"a_bucket", "b_total"}


# --------------------------------------------------------------------------- dashboard


def test_dashboard_covers_the_operator_questions() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"

    queries = " ".join(expr for _, expr in dashboard_queries())
    needed = {
        "throughput": r"rate\(jobq_jobs_finished_total",
        "failures": r'jobq_jobs_finished_total\{status="failed"\}',
        "durations": r"jobq_job_duration_seconds_bucket",
        "queue wait": r"jobq_job_queue_wait_seconds_bucket",
        "queue depth": r"jobq_queue_depth",
        "DLQ depth": r"jobq_dlq_depth",
        "in flight per worker": r"sum by \(instance\) \(jobq_jobs_in_flight\)",
        "API latency": r"jobq_http_request_duration_seconds_bucket",
    }
    missing = [what for what, pattern in needed.items() if not re.search(pattern, queries)]
    assert not missing, f"the dashboard shows nothing about: {missing}"
