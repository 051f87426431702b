"""infra/k8s: the kustomize base and the dev overlay build, validate and hang together.

* `kubectl kustomize` (kustomize v4+; KUSTOMIZE may name a kustomize binary) builds both;
* every object validates, strictly (unknown fields are errors), against the Kubernetes schemas
  that kubernetes-validate ships, and KEDA's against a JSON Schema made from the KEDA CRD
  models that cloudcoil-models-keda ships (made strict the same way);
* then the properties an operator relies on: probes, resources, non-root and read-only
  containers, the worker's grace period above its drain time, the ScaledObject on the SQS
  queues named in the ConfigMap, PDB/HPA/Service aimed at the API pods, secrets only by
  reference.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
BUILDS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev"}
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported upstream when written


def kustomize_command() -> list[str]:
    """kustomize itself (KUSTOMIZE) or kubectl's built-in one; fail if missing or too old."""
    if binary := os.environ.get("KUSTOMIZE"):
        return [binary, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing (it ships kustomize): install kubectl, or set KUSTOMIZE")
    version = subprocess.run(  # noqa: S603 - fixed argv
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if not found or int(found.group(1)) < 4:
        pytest.fail(f"kubectl's kustomize is older than v4 (labels:, patches:):\n{version}")
    return [kubectl, "kustomize"]


@cache
def build(name: str) -> tuple[dict[str, Any], ...]:
    """The objects `kustomize build` makes of one kustomization."""
    proc = subprocess.run(  # noqa: S603 - fixed argv
        [*kustomize_command(), str(BUILDS[name])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kustomize build {name} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def objects(name: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in build(name) if o["kind"] == kind}


def _strict(schema: Any) -> Any:
    """Forbid unknown members wherever the schema lists the known ones."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    """JSON Schema of a keda.sh/v1alpha1 kind, from cloudcoil's models of KEDA's CRDs."""
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, kind)
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_strict(schema))


def validate(obj: dict[str, Any]) -> None:
    """Fail unless `obj` is valid against its Kubernetes (or KEDA) schema, strictly."""
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.Draft202012Validator(keda_schema(obj["kind"])).validate(obj)
        return
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def config_data(name: str) -> dict[str, str]:
    (config,) = objects(name, "ConfigMap").values()
    return dict(config["data"])


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_builds_and_validates_strictly(name: str) -> None:
    built = build(name)
    kinds = {o["kind"] for o in built}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "TriggerAuthentication",
        "Job",
        "ConfigMap",
        "ServiceAccount",
    } <= kinds
    for obj in built:
        validate(obj)


def test_validation_catches_what_it_should() -> None:
    """The validators reject an unknown field and a wrong type, for core kinds and KEDA's."""
    import kubernetes_validate

    deployment = copy.deepcopy(objects("base", "Deployment")["jobq-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = copy.deepcopy(objects("base", "ScaledObject")["jobq-worker"])
    scaled["spec"]["maxReplicas"] = 10  # KEDA's field is maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    scaled = copy.deepcopy(objects("base", "ScaledObject")["jobq-worker"])
    scaled["spec"]["triggers"][0]["metadata"]["queueLength"] = 20  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_every_pod_is_non_root_read_only_and_sized(name: str) -> None:
    workloads = [*objects(name, "Deployment").values(), *objects(name, "Job").values()]
    assert len(workloads) == 3
    for obj in workloads:
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] == 10001  # the images' USER
        assert pod["automountServiceAccountToken"] is False
        for container in containers(obj):
            where = f"{obj['metadata']['name']}/{container['name']}"
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_api_probes_pdb_hpa_and_service(name: str) -> None:
    api = objects(name, "Deployment")["jobq-api"]
    (container,) = containers(api)
    assert container["command"] == ["jobq", "api"]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == int(config_data(name)["PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    pdb = objects(name, "PodDisruptionBudget")["jobq-api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = objects(name, "Service")["jobq-api"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = objects(name, "HorizontalPodAutoscaler")["jobq-api"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "jobq-api",
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A PDB must leave room to evict one pod at the HPA's minimum, or node drains hang.
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_worker_drains_before_sigkill_and_keda_scales_it_on_sqs(name: str) -> None:
    worker = objects(name, "Deployment")["jobq-worker"]
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    (container,) = containers(worker)
    assert container["command"] == ["jobq", "worker"]
    assert "JOBQ_TASK_MODULES" in {e["name"] for e in container["env"]}, "no way to run own tasks"
    config = config_data(name)
    assert int(config["JOBQ_MAX_ATTEMPTS"]) == 10, "attempts are handler runs, not receives"
    grace = float(config["JOBQ_SHUTDOWN_GRACE_SECONDS"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace

    scaled = objects(name, "ScaledObject")["jobq-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "jobq-worker"
    assert scaled["spec"]["scaleTargetRef"]["envSourceContainerName"] == container["name"]
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"aws-sqs-queue"}
    queues = {t["metadata"]["queueURLFromEnv"] for t in triggers}
    assert queues == {"SQS_QUEUE_URL", "SQS_HIGH_QUEUE_URL", "SQS_LOW_QUEUE_URL"}
    for trigger in triggers:
        assert config[trigger["metadata"]["queueURLFromEnv"]].startswith("https://sqs.")
        assert trigger["metadata"]["awsRegion"] == config["AWS_REGION"]
        auth = trigger["authenticationRef"]["name"]
        assert auth in objects(name, "TriggerAuthentication")
    assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_migrations_job_and_references_resolve(name: str) -> None:
    job = objects(name, "Job")["jobq-migrate"]
    (container,) = containers(job)
    assert container["command"] == ["jobq", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    config_names = set(objects(name, "ConfigMap"))
    accounts = set(objects(name, "ServiceAccount"))
    for obj in [*objects(name, "Deployment").values(), job]:
        pod = obj["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] in accounts
        for c in containers(obj):
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_names, "hash suffix followed"
            env = {e["name"]: e for e in c.get("env", [])}
            ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "jobq-secrets", "key": "DATABASE_URL"}
            assert all("value" not in e for e in env.values() if e["name"] != "JOBQ_LOG_FORMAT")


def test_no_secret_values_in_the_repository() -> None:
    for name in BUILDS:
        assert not objects(name, "Secret"), f"{name}: Secrets are created outside the repo"
    for path in K8S.rglob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^kind:\s*Secret\s*$", text, re.M), path
        assert not re.search(r"postgres(ql)?(\+\w+)?://", text), f"{path}: a URL with credentials"


def test_dev_overlay_changes_only_what_it_says() -> None:
    base, dev = build("base"), build("dev")
    assert {o["metadata"].get("namespace") for o in dev if o["kind"] != "Namespace"} == {"jobq-dev"}
    namespace = objects("dev", "Namespace")["jobq-dev"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert config_data("dev")["SQS_QUEUE_URL"].endswith("/jobq-dev-default")
    assert (
        config_data("dev")["JOBQ_SHUTDOWN_GRACE_SECONDS"]
        == config_data("base")["JOBQ_SHUTDOWN_GRACE_SECONDS"]
    )
    images = {
        c["image"]
        for kind in ("Deployment", "Job")
        for obj in objects("dev", kind).values()
        for c in containers(obj)
    }
    assert images == {
        "registry.example.com/jobq/jobq-api:dev",
        "registry.example.com/jobq/jobq-worker:dev",
    }
    assert objects("dev", "ScaledObject")["jobq-worker"]["spec"]["minReplicaCount"] == 0
    assert "maxUnavailable" in objects("dev", "PodDisruptionBudget")["jobq-api"]["spec"]
    assert len(dev) == len(base) + 1  # the Namespace
