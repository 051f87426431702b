"""The CloudFormation stack's alarms can fire on what they watch, and the API autoscales."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy import load_template


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return dict(load_template()["Resources"])


def _metrics(alarm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """MetricName -> Metric of an alarm, whether it has one metric or metric math."""
    props = alarm["Properties"]
    if "MetricName" in props:
        return {props["MetricName"]: props}
    return {
        m["MetricStat"]["Metric"]["MetricName"]: m["MetricStat"]["Metric"]
        for m in props["Metrics"]
        if "MetricStat" in m
    }


def _dimensions(metric: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in metric["Dimensions"]}


def test_every_alarm_notifies_the_topic_both_ways(resources: dict[str, Any]) -> None:
    alarms = {k: v for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert len(alarms) == 7
    notify = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    for name, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == notify and props["OKActions"] == notify, name
        assert props["TreatMissingData"] == "notBreaching", name
        assert props["AlarmName"]["Fn::Sub"].startswith("${EnvironmentName}-"), name


def test_api_alarms_watch_the_api_target_group(resources: dict[str, Any]) -> None:
    errors = _metrics(resources["Api5xxAlarm"])
    assert set(errors) == {"HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count"}
    for metric in errors.values():
        assert metric["Namespace"] == "AWS/ApplicationELB"
        dims = _dimensions(metric)
        assert dims["LoadBalancer"] == {"Fn::GetAtt": ["LoadBalancer", "LoadBalancerFullName"]}
    target = _dimensions(errors["HTTPCode_Target_5XX_Count"])
    assert target["TargetGroup"] == {"Fn::GetAtt": ["ApiTargetGroup", "TargetGroupFullName"]}
    (expression,) = [
        m for m in resources["Api5xxAlarm"]["Properties"]["Metrics"] if "Expression" in m
    ]
    assert expression["ReturnData"] is True and "target" in expression["Expression"]
    assert resources["Api5xxAlarm"]["Properties"]["Threshold"] == {"Ref": "Api5xxAlarmThreshold"}

    unhealthy = resources["UnhealthyApiTargetsAlarm"]["Properties"]
    assert unhealthy["MetricName"] == "UnHealthyHostCount"
    assert _dimensions(unhealthy)["TargetGroup"] == {
        "Fn::GetAtt": ["ApiTargetGroup", "TargetGroupFullName"]
    }
    assert unhealthy["ComparisonOperator"] == "GreaterThanThreshold" and unhealthy["Threshold"] == 0


def test_workers_at_max_compares_with_the_scaling_limit(resources: dict[str, Any]) -> None:
    props = resources["WorkersAtMaxAlarm"]["Properties"]
    assert (
        props["Namespace"] == "ECS/ContainerInsights" and props["MetricName"] == "RunningTaskCount"
    )
    assert _dimensions(props)["ServiceName"] == {"Fn::GetAtt": ["WorkerService", "Name"]}
    # The same number autoscaling stops at, reached for the whole window (Minimum per minute).
    assert props["Threshold"] == resources["WorkerScalableTarget"]["Properties"]["MaxCapacity"]
    assert props["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert props["Statistic"] == "Minimum"
    assert props["EvaluationPeriods"] == {"Ref": "WorkersAtMaxAlarmMinutes"}


def test_dlq_alarms_count_arrivals_and_a_queue_nobody_drains(resources: dict[str, Any]) -> None:
    arrivals = resources["DeadLetterArrivalsAlarm"]["Properties"]
    assert arrivals["MetricName"] == "jobq_dlq_arrivals_total" and arrivals["Threshold"] == 0
    depth = resources["DeadLetterQueueDepthAlarm"]["Properties"]
    # Minimum over 5 minutes: a message the consumer settles within seconds never trips it.
    assert depth["Statistic"] == "Minimum" and depth["EvaluationPeriods"] == 5


def test_api_autoscales_on_cpu_within_its_limits(resources: dict[str, Any]) -> None:
    target = resources["ApiScalableTarget"]["Properties"]
    assert target["ResourceId"] == {"Fn::Sub": "service/${Cluster}/${ApiService.Name}"}
    assert target["MinCapacity"] == {"Ref": "ApiDesiredCount"}
    assert target["MaxCapacity"] == {"Ref": "ApiMaxCount"}
    policy = resources["ApiCpuPolicy"]["Properties"]
    assert policy["ScalingTargetId"] == {"Ref": "ApiScalableTarget"}
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ECSServiceAverageCPUUtilization"
    }
    assert config["TargetValue"] == {"Ref": "ApiCpuTarget"}
    assert config["ScaleInCooldown"] > config["ScaleOutCooldown"]
