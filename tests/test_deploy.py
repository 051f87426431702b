"""Keep the deployment files honest without Docker, AWS or a network.

Covers Dockerfile.api, Dockerfile.worker, .dockerignore, docker-compose.yml (with
infra/elasticmq.conf) and the CloudFormation template infra/jobq.yaml:

* cfn-lint passes on the template;
* checkov passes on the template and the Dockerfiles, and every suppression carries a reason;
* the compose file validates against the Compose Specification schema;
* every `jobq <subcommand>` that compose, the Dockerfiles or the template run is a real subcommand
  (a fixed list here, and `app.cli.main.build_parser()`);
* the Dockerfiles are multi-stage, slim, non-root, exec-form, and the API one has a HEALTHCHECK;
* the SQS part of the template, deployed into moto's CloudFormation, yields queues whose
  RedrivePolicy points at the DLQ with the maxReceiveCount passed as a parameter.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "jobq.yaml"
COMPOSE = ROOT / "docker-compose.yml"
ELASTICMQ_CONF = ROOT / "infra" / "elasticmq.conf"
DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}

# The console script's subcommands that deployment files may run. Kept in step with
# app/cli/main.py by test_deployed_subcommands_exist_in_build_parser.
KNOWN_SUBCOMMANDS = {"api", "worker", "migrate", "dispatcher", "dlq-consumer", "dev", "keys"}

MAIN_QUEUES = ("HighQueue", "DefaultQueue", "LowQueue")
MIN_REASON_CHARS = 30


# --------------------------------------------------------------------------- helpers


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short-form tags (!Ref, !Sub, ...) into long form."""


def _construct_intrinsic(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        raise yaml.constructor.ConstructorError(None, None, f"unexpected node {node!r}")
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def _require(module: str) -> None:
    """Fail (never skip) when a dev tool these checks need is missing."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(
            f"{module} is not installed here; install the dev extra: pip install -e '.[dev]'"
        )


def load_template() -> dict[str, Any]:
    with TEMPLATE.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def referenced_names(node: Any) -> Iterator[str]:
    """Every Ref target and ${Name} inside Fn::Sub strings, recursively."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                yield value
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                yield from (m.split(".")[0] for m in re.findall(r"\$\{([A-Za-z0-9:.]+)\}", text))
                if not isinstance(value, str):
                    yield from referenced_names(value[1])
            else:
                yield from referenced_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from referenced_names(item)


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if not full:
            continue
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Split instructions into build stages, each starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def jobq_subcommands(argv: list[str]) -> list[str]:
    """The subcommand of a `jobq ...` command line (empty if the command is not jobq)."""
    if len(argv) >= 2 and Path(argv[0]).name == "jobq":
        return [argv[1]]
    return []


def as_argv(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def load_compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def deployed_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command compose, the Dockerfiles and the template would run."""
    found: list[tuple[str, list[str]]] = []
    for name, service in load_compose()["services"].items():
        for key in ("entrypoint", "command"):
            if key in service:
                found.append((f"docker-compose.yml services.{name}.{key}", as_argv(service[key])))
    for path in DOCKERFILES.values():
        for keyword, args in stages(parse_dockerfile(path))[-1]:
            if keyword in ("CMD", "ENTRYPOINT"):
                argv = exec_form(args)
                assert argv is not None, f"{path.name}: {keyword} must be exec form, got {args!r}"
                found.append((f"{path.name} {keyword}", argv))
    for logical_id, resource in load_template()["Resources"].items():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        for container in resource["Properties"]["ContainerDefinitions"]:
            for key in ("EntryPoint", "Command"):
                if key in container:
                    found.append((f"infra/jobq.yaml {logical_id}.{key}", as_argv(container[key])))
    return found


def deployed_subcommands() -> dict[str, set[str]]:
    """subcommand -> where it is used."""
    used: dict[str, set[str]] = {}
    for where, argv in deployed_commands():
        for sub in jobq_subcommands(argv):
            used.setdefault(sub, set()).add(where)
    return used


def checkov_skips_in_template(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(logical id, check id) -> reason for every checkov suppression in the template."""
    skips: dict[tuple[str, str], str] = {}
    for logical_id, resource in template["Resources"].items():
        meta = (resource.get("Metadata") or {}).get("checkov") or {}
        for entry in meta.get("skip", []):
            skips[(logical_id, entry["id"])] = str(entry.get("comment") or "").strip()
    return skips


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def checkov_reports() -> dict[str, dict[str, Any]]:
    """One checkov run per session over the template and both Dockerfiles (offline).

    checkov pins old boto3/packaging, so `make test` installs it in its own venv
    (.venv-tools); CHECKOV may name another executable.
    """
    checkov = os.environ.get("CHECKOV") or str(ROOT / ".venv-tools" / "bin" / "checkov")
    if not Path(checkov).exists():
        pytest.fail(f"checkov not found at {checkov}; run `make test` (it installs it)")
    env = dict(os.environ)
    env.update(
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",  # no PyPI version check
        BC_SKIP_MAPPING="TRUE",  # no guideline download
        LOG_LEVEL="ERROR",
    )
    env.pop("BC_API_KEY", None)
    targets = [TEMPLATE, *DOCKERFILES.values()]
    cmd = [checkov, "--compact", "--skip-download"]
    cmd += ["--framework", "cloudformation", "dockerfile", "--output", "json"]
    for target in targets:
        cmd += ["--file", str(target.relative_to(ROOT))]
    proc = subprocess.run(  # noqa: S603 - fixed argv, our own interpreter
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    reports = data if isinstance(data, list) else [data]
    return {report["check_type"]: report for report in reports}


# --------------------------------------------------------------------------- 1. cfn-lint


def test_cfn_lint_passes() -> None:
    _require("cfnlint")
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(
        TEMPLATE, config=ManualArgs(regions=["us-east-1", "eu-west-1"], include_checks=["I"])
    )
    assert not matches, "cfn-lint findings:\n" + "\n".join(str(m) for m in matches)


# --------------------------------------------------------------------------- 2. checkov


def test_checkov_scanned_everything(checkov_reports: dict[str, dict[str, Any]]) -> None:
    assert set(checkov_reports) == {"cloudformation", "dockerfile"}
    for check_type, report in checkov_reports.items():
        summary = report["summary"]
        assert summary["parsing_errors"] == 0, f"{check_type}: parsing errors {summary}"
        assert summary["passed"] > 0, f"{check_type}: nothing was checked {summary}"
    assert checkov_reports["cloudformation"]["summary"]["resource_count"] >= 20


def test_checkov_has_no_failures(checkov_reports: dict[str, dict[str, Any]]) -> None:
    failures = [
        f"{c['check_id']} {c['check_name']} -> {c['resource']} ({c.get('file_path')})"
        for report in checkov_reports.values()
        for c in report["results"]["failed_checks"]
    ]
    assert not failures, "checkov failures (fix, or skip with a reason in the file):\n" + "\n".join(
        failures
    )


def test_every_checkov_suppression_is_justified_and_used(
    template: dict[str, Any], checkov_reports: dict[str, dict[str, Any]]
) -> None:
    declared = checkov_skips_in_template(template)
    for (logical_id, check_id), reason in declared.items():
        assert len(reason) >= MIN_REASON_CHARS, (
            f"{logical_id}: checkov skip {check_id} needs a real reason in its comment"
        )
    # Inline Dockerfile suppressions (# checkov:skip=ID: reason) need a reason too.
    for path in DOCKERFILES.values():
        for match in re.finditer(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?", path.read_text()):
            reason = (match.group(2) or "").strip()
            assert len(reason) >= MIN_REASON_CHARS, (
                f"{path.name}: skip {match.group(1)} lacks a reason"
            )

    skipped = checkov_reports["cloudformation"]["results"]["skipped_checks"]
    applied = {(c["resource"].split(".", 1)[1], c["check_id"]) for c in skipped}
    for c in skipped:
        comment = ((c.get("check_result") or {}).get("suppress_comment") or "").strip()
        assert comment, f"{c['check_id']} on {c['resource']} is suppressed without a reason"
    stale = set(declared) - applied
    assert not stale, f"suppressions for checks that no longer fire (remove them): {sorted(stale)}"
    assert applied <= set(declared), (
        f"suppressed outside the template metadata: {applied - set(declared)}"
    )


# --------------------------------------------------------------------------- 3. compose


def test_compose_validates_against_compose_spec(compose: dict[str, Any]) -> None:
    _require("jsonschema")
    _require("check_jsonschema")
    import jsonschema

    # The Compose Specification schema as vendored (with its licence) by check-jsonschema.
    schema_file = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_services_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "elasticmq", "migrate", "api", "worker"} <= set(services)

    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    assert any(str(v).split(":")[0] in compose.get("volumes", {}) for v in postgres["volumes"])
    assert "pg_isready" in " ".join(as_argv(postgres["healthcheck"]["test"]))

    elasticmq = services["elasticmq"]
    assert str(elasticmq["image"]).startswith("softwaremill/elasticmq-native")
    assert any("infra/elasticmq.conf" in str(v) for v in elasticmq["volumes"])
    assert elasticmq.get("healthcheck", {}).get("test")

    def condition(service: str, dependency: str) -> str:
        return services[service]["depends_on"][dependency]["condition"]

    assert as_argv(services["migrate"]["command"]) == ["jobq", "migrate"]
    assert condition("migrate", "postgres") == "service_healthy"
    assert services["migrate"]["build"]["dockerfile"] == "Dockerfile.api"
    assert condition("api", "migrate") == "service_completed_successfully"
    assert condition("api", "elasticmq") == "service_healthy"
    assert condition("worker", "migrate") == "service_completed_successfully"
    assert condition("worker", "elasticmq") == "service_healthy"
    assert any(str(p).endswith("8000:8000") for p in services["api"]["ports"])

    # Local compose runs without API keys unless the caller exports JOBQ_AUTH / JOBQ_API_KEYS.
    api_env = services["api"]["environment"]
    assert api_env["JOBQ_AUTH"] == "${JOBQ_AUTH:-disabled}"
    assert api_env["JOBQ_API_KEYS"] == "${JOBQ_API_KEYS:-}"

    # Every service_healthy dependency has a healthcheck to wait for (images we build carry theirs).
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            if spec.get("condition") == "service_healthy" and "build" not in services[dep]:
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}'s healthcheck"

    for service in services.values():
        if "build" in service:
            assert (
                ROOT / service["build"].get("context", ".") / service["build"]["dockerfile"]
            ).is_file()


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return total


def test_compose_worker_is_scalable_and_drains(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "a fixed container name prevents --scale worker=N"
    assert not worker.get("ports"), "fixed host ports prevent --scale worker=N"
    grace = float(worker["environment"]["JOBQ_SHUTDOWN_GRACE_SECONDS"])
    assert _seconds(worker["stop_grace_period"]) == 30
    assert grace < _seconds(worker["stop_grace_period"]), (
        "SIGKILL would cut the worker's drain short"
    )
    # A team's own tasks reach the workers from the caller's environment.
    assert worker["environment"]["JOBQ_TASK_MODULES"] == "${JOBQ_TASK_MODULES:-}"


def test_compose_queues_exist_in_elasticmq_with_redrive(compose: dict[str, Any]) -> None:
    conf = ELASTICMQ_CONF.read_text(encoding="utf-8")
    env = compose["services"]["worker"]["environment"]
    dlq_name = env["SQS_DLQ_URL"].rsplit("/", 1)[1]
    assert int(env["JOBQ_MAX_ATTEMPTS"]) == 10, "the default retry schedule's attempts"
    for var in ("SQS_QUEUE_URL", "SQS_HIGH_QUEUE_URL", "SQS_LOW_QUEUE_URL"):
        name = env[var].rsplit("/", 1)[1]
        block = re.search(rf'"?{re.escape(name)}"?\s*\{{(.*?)\n  \}}', conf, re.S)
        assert block, f"{var}: queue {name} is not defined in infra/elasticmq.conf"
        body = block.group(1)
        assert re.search(rf'deadLettersQueue\s*\{{[^}}]*name\s*=\s*"{dlq_name}"', body), name
        count = re.search(r"maxReceiveCount\s*=\s*(\d+)", body)
        # The crash-loop guard, like the stack's default; attempts are counted by jobq.
        assert count and int(count.group(1)) == 5, f"{name}: maxReceiveCount is not 5"
        assert re.search(r"defaultVisibilityTimeout\s*=\s*30 seconds", body), name
    assert re.search(rf'"?{re.escape(dlq_name)}"?\s*\{{', conf), "DLQ missing from elasticmq.conf"
    for service in compose["services"].values():
        if "environment" in service and "SQS_QUEUE_URL" in service["environment"]:
            assert service["environment"]["SQS_ENDPOINT_URL"] == "http://elasticmq:9324"


# --------------------------------------------------------------------------- 3b. subcommands


def test_deployed_subcommands_are_known() -> None:
    used = deployed_subcommands()
    assert {"api", "worker", "migrate"} <= set(used), used
    unknown = {sub: sorted(where) for sub, where in used.items() if sub not in KNOWN_SUBCOMMANDS}
    assert not unknown, f"unknown jobq subcommands: {unknown}"


def _parser_subcommands(parser: argparse.ArgumentParser) -> set[str]:
    names: set[str] = set()
    for action in parser._actions:  # noqa: SLF001 - argparse exposes subparsers only this way
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            names.update(action.choices)
    return names


def test_deployed_subcommands_exist_in_build_parser() -> None:
    try:
        cli = importlib.import_module("app.cli.main")
    except ImportError as exc:
        pytest.fail(f"app.cli must be importable to check the deployed commands: {exc!r}")
    build_parser = getattr(cli, "build_parser", None)
    assert callable(build_parser), "app.cli.main.build_parser() must return the argparse parser"
    real = _parser_subcommands(build_parser())
    assert real, "build_parser() has no subcommands"
    used = deployed_subcommands()
    missing = {sub: sorted(where) for sub, where in used.items() if sub not in real}
    assert not missing, f"deployment files run subcommands app.cli.main does not have: {missing}"
    assert real >= KNOWN_SUBCOMMANDS, (
        f"KNOWN_SUBCOMMANDS drifted from app.cli: {KNOWN_SUBCOMMANDS - real}"
    )


def test_pyproject_packages_what_the_images_run() -> None:
    """The images install the project with `pip install .`: `jobq` and the migrations must ship."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"]["jobq"] == "app.cli.main:main"
    setuptools_cfg = pyproject.get("tool", {}).get("setuptools", {})
    packages = setuptools_cfg.get("packages")
    if isinstance(packages, list):
        shipped = lambda name: name in packages  # noqa: E731
    else:
        find = (packages or {}).get("find", {}) if isinstance(packages, dict) else {}
        include = find.get("include", ["*"])
        shipped = lambda name: any(fnmatch.fnmatch(name, pat) for pat in include)  # noqa: E731
    for package in ("app", "worker", "migrations", "migrations.versions"):
        if (ROOT / package.replace(".", "/")).is_dir():
            assert shipped(package), (
                f"pyproject.toml does not package {package!r}, but the images need it"
            )


# --------------------------------------------------------------------------- 4. Dockerfiles


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_is_multistage_slim_nonroot_exec_form(kind: str) -> None:
    path = DOCKERFILES[kind]
    all_stages = stages(parse_dockerfile(path))
    assert len(all_stages) >= 2, f"{path.name} must be multi-stage"
    for stage in all_stages:
        image, _, digest = stage[0][1].split()[0].partition("@")
        if image.startswith("python:"):
            assert image.split(":", 1)[1].endswith("-slim") or "-slim-" in image, image
        # Pinned by digest (scripts/pin-images.sh refreshes it), the tag kept for readers.
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{path.name}: {image} not pinned"
    assert all_stages[0][0][1].split()[0].split("@")[0] == "python:3.11-slim"
    final = all_stages[-1]
    assert final[0][1].split()[0].split("@")[0] == "python:3.11-slim"

    users = [args for keyword, args in final if keyword == "USER"]
    assert users, f"{path.name}: final stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: USER {users[-1]} is root"

    for keyword, args in final:
        if keyword in ("CMD", "ENTRYPOINT"):
            assert exec_form(args), (
                f"{path.name}: {keyword} {args} is shell form (SIGTERM would hit sh)"
            )
    cmds = [exec_form(args) for keyword, args in final if keyword == "CMD"]
    assert cmds and cmds[-1] == ["jobq", kind]

    copies_from_builder = [a for k, a in final if k == "COPY" and a.startswith("--from=")]
    assert copies_from_builder, f"{path.name}: final stage must copy the install from the builder"
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    for tool in (
        "apt-get install",
        "apk add",
        "gcc",
        "build-essential",
        "pip install",
        "pip wheel",
    ):
        assert tool not in runs, f"{path.name}: final stage must not install build tools ({tool})"

    builder_runs = " ".join(a for k, a in all_stages[0] if k == "RUN")
    assert re.search(r"pip install (--prefix|.*--prefix)", builder_runs), (
        "builder installs with --prefix"
    )


def test_api_dockerfile_healthcheck_and_port() -> None:
    final = stages(parse_dockerfile(DOCKERFILES["api"]))[-1]
    checks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert checks, "Dockerfile.api needs a HEALTHCHECK"
    probe = checks[-1][checks[-1].index("CMD") + 3 :].strip()
    argv = exec_form(probe)
    assert argv and argv[0].startswith("python"), "probe with python (slim images have no curl)"
    assert "/healthz" in " ".join(argv) and "8000" in " ".join(argv)
    assert any(k == "EXPOSE" and "8000" in a.split() for k, a in final)


def test_builder_copies_exist_and_are_not_dockerignored() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".venv", ".git", ".jobq", "**/__pycache__", "node_modules", "bench/results"):
        assert must in ignored, f".dockerignore should exclude {must}"
    for path in DOCKERFILES.values():
        for keyword, args in stages(parse_dockerfile(path))[0]:
            if keyword != "COPY" or args.startswith("--from="):
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source} - no such file"
                assert not any(fnmatch.fnmatch(source, pat) for pat in ignored), (
                    f"{path.name}: COPY {source} is excluded by .dockerignore"
                )


# --------------------------------------------------------------------------- template structure


def test_template_wiring(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    params = template["Parameters"]
    assert params["MaxReceiveCount"]["Default"] == 5
    assert params["MaxReceiveCount"]["MinValue"] >= 2, "a crashed job needs an isolated rerun"
    assert params["MaxAttempts"]["Default"] == 10

    worker_td = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    env = {e["Name"]: e["Value"] for e in worker_td["Environment"]}
    assert worker_td["StopTimeout"] <= 120, "Fargate caps stopTimeout at 120 s"
    assert float(env["JOBQ_SHUTDOWN_GRACE_SECONDS"]) < worker_td["StopTimeout"]
    assert env["JOBQ_MAX_ATTEMPTS"] == {"Ref": "MaxAttempts"}
    api_td = resources["ApiTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    api_env = {e["Name"]: e["Value"] for e in api_td["Environment"]}
    assert api_env["JOBQ_MAX_ATTEMPTS"] == {"Ref": "MaxAttempts"}
    assert api_env["JOBQ_FORWARDED_ALLOW_IPS"] == {"Ref": "ForwardedAllowIps"}

    for td in ("ApiTaskDefinition", "WorkerTaskDefinition"):
        props = resources[td]["Properties"]
        assert props["RequiresCompatibilities"] == ["FARGATE"]
        assert props["ExecutionRoleArn"] != props["TaskRoleArn"]
        container = props["ContainerDefinitions"][0]
        names = {e["Name"] for e in container["Environment"]}
        assert not names & {"DATABASE_URL", "JOBQ_API_KEYS"}, f"{td}: secrets in plain environment"
        assert container["Secrets"][0]["Name"] == "DATABASE_URL"
        for var in ("SQS_QUEUE_URL", "SQS_HIGH_QUEUE_URL", "SQS_LOW_QUEUE_URL", "SQS_DLQ_URL"):
            assert var in names, f"{td}: {var}"

    # API keys: the API requires them explicitly and gets JOBQ_API_KEYS from ApiKeysSecretArn only
    # when that parameter is set (otherwise it uses the keys created with `jobq keys create`).
    assert params["ApiKeysSecretArn"]["Default"] == ""
    assert re.fullmatch(params["ApiKeysSecretArn"]["AllowedPattern"], "")
    assert template["Conditions"]["HasApiKeysSecret"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ApiKeysSecretArn"}, ""]}]
    }
    api_container = resources["ApiTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    api_env = {e["Name"]: e["Value"] for e in api_container["Environment"]}
    assert api_env["JOBQ_AUTH"] == "required"
    assert api_container["Secrets"][1:] == [
        {
            "Fn::If": [
                "HasApiKeysSecret",
                {"Name": "JOBQ_API_KEYS", "ValueFrom": {"Ref": "ApiKeysSecretArn"}},
                {"Ref": "AWS::NoValue"},
            ]
        }
    ]
    # The worker and the migration task never see the API keys (nor the parameter at all).
    for td in ("WorkerTaskDefinition", "MigrateTaskDefinition"):
        container = resources[td]["Properties"]["ContainerDefinitions"][0]
        assert [s["Name"] for s in container["Secrets"]] == ["DATABASE_URL"], td
        assert "ApiKeysSecretArn" not in set(referenced_names(resources[td])), td
        assert not {"JOBQ_AUTH", "JOBQ_API_KEYS"} & {e["Name"] for e in container["Environment"]}

    migrate = resources["MigrateTaskDefinition"]["Properties"]
    assert "TaskRoleArn" not in migrate, "the migration task needs no AWS API access"
    assert migrate["ContainerDefinitions"][0]["Command"] == ["jobq", "migrate"]

    tg = resources["ApiTargetGroup"]["Properties"]
    assert tg["HealthCheckPath"] == "/readyz" and tg["Port"] == 8000

    # Fargate services only, the API behind the ALB target group.
    api = resources["ApiService"]["Properties"]
    assert api["LoadBalancers"][0]["TargetGroupArn"] == {"Ref": "ApiTargetGroup"}

    # Autoscaling: target tracking on (sum of visible messages over the queues) / running tasks.
    target = resources["WorkerScalableTarget"]["Properties"]
    assert target["MinCapacity"] == {"Ref": "WorkerMinCount"}
    assert target["MaxCapacity"] == {"Ref": "WorkerMaxCount"}
    policy = resources["WorkerBacklogPerTaskPolicy"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    metrics = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"][
        "Metrics"
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for m in metrics:
        if "MetricStat" in m:
            by_name.setdefault(m["MetricStat"]["Metric"]["MetricName"], []).append(m)
    visible_queues = {
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for m in by_name["ApproximateNumberOfMessagesVisible"]
    }
    assert visible_queues == set(MAIN_QUEUES)
    assert (
        by_name["RunningTaskCount"][0]["MetricStat"]["Metric"]["Namespace"]
        == "ECS/ContainerInsights"
    )
    (expression,) = [m for m in metrics if "Expression" in m]
    assert expression["ReturnData"] is True and "/" in expression["Expression"]
    assert sum(1 for m in metrics if m.get("ReturnData", True)) == 1

    cluster = resources["Cluster"]["Properties"]["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster

    alarm_metrics = {
        r["Properties"].get("MetricName")
        or next(
            m["MetricStat"]["Metric"]["MetricName"]
            for m in r["Properties"]["Metrics"]
            if "MetricStat" in m
        )
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"} <= alarm_metrics

    for group in ("ApiLogGroup", "WorkerLogGroup"):
        assert resources[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_dedicated_pool_serves_its_queue_and_scales_on_its_backlog(
    template: dict[str, Any],
) -> None:
    resources = template["Resources"]
    pool = {k for k, v in resources.items() if v.get("Condition") == "HasPool"}
    assert pool == {
        "PoolQueue",
        "PoolTaskDefinition",
        "PoolService",
        "PoolScalableTarget",
        "PoolBacklogPerTaskPolicy",
    }
    (container,) = resources["PoolTaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["JOBQ_QUEUES"] == {"Ref": "PoolQueueName"}
    assert env["JOBQ_QUEUE_URLS"] == {"Fn::Sub": "${PoolQueueName}=${PoolQueue}"}
    assert env["JOBQ_TASK_MODULES"] == {"Ref": "TaskModules"}
    # Everyone who routes or settles jobs knows the pool's queue URL (when there is a pool).
    for td in ("ApiTaskDefinition", "WorkerTaskDefinition"):
        (c,) = resources[td]["Properties"]["ContainerDefinitions"]
        urls = {e["Name"]: e["Value"] for e in c["Environment"]}["JOBQ_QUEUE_URLS"]
        assert urls == {"Fn::If": ["HasPool", {"Fn::Sub": "${PoolQueueName}=${PoolQueue}"}, ""]}
    service = resources["PoolService"]["Properties"]
    assert service["TaskDefinition"] == {"Ref": "PoolTaskDefinition"}
    assert "DesiredCount" not in service, "autoscaling owns the count"
    metrics = resources["PoolBacklogPerTaskPolicy"]["Properties"][
        "TargetTrackingScalingPolicyConfiguration"
    ]["CustomizedMetricSpecification"]["Metrics"]
    queues = [
        m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
        for m in metrics
        if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "AWS/SQS"
    ]
    assert queues == [{"Fn::GetAtt": ["PoolQueue", "QueueName"]}], "its own backlog only"
    assert resources["PoolScalableTarget"]["Properties"]["MinCapacity"] >= 1


def _role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    statements = []
    for policy in template["Resources"][role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:  # conditional statement: [condition, then, else]
                statement = statement["Fn::If"][1]
            statements.append(statement)
    return statements


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_iam_least_privilege(template: dict[str, Any]) -> None:
    def grants(role: str) -> dict[str, set[str]]:
        """action -> logical ids (or parameter names) of the resources it is granted on."""
        result: dict[str, set[str]] = {}
        for statement in _role_statements(template, role):
            assert statement["Effect"] == "Allow"
            for resource in _as_list(statement["Resource"]):
                assert resource != "*", f"{role}: wildcard resource"
                if "Fn::If" in resource:  # [condition, then, AWS::NoValue]
                    assert resource["Fn::If"][2] == {"Ref": "AWS::NoValue"}
                    resource = resource["Fn::If"][1]
                target = resource.get("Fn::GetAtt", [None])[0] or resource.get("Ref")
                for action in _as_list(statement["Action"]):
                    assert "*" not in action, f"{role}: wildcard action {action}"
                    result.setdefault(action, set()).add(target)
        return result

    api = grants("ApiTaskRole")
    assert set(api) == {"sqs:SendMessage", "sqs:GetQueueAttributes"}
    assert api["sqs:SendMessage"] == {*MAIN_QUEUES, "PoolQueue"}, "only jobq's own queues"

    worker = grants("WorkerTaskRole")
    consume = {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    assert set(worker) == {*consume, "sqs:SendMessage"}
    for action in consume:
        assert worker[action] == {*MAIN_QUEUES, "DeadLetterQueue", "PoolQueue"}
    # Retries go out as fresh messages from the worker; nothing is sent to the DLQ by hand.
    assert worker["sqs:SendMessage"] == {*MAIN_QUEUES, "PoolQueue"}

    execution = grants("TaskExecutionRole")
    assert execution["secretsmanager:GetSecretValue"] == {"DatabaseSecretArn", "ApiKeysSecretArn"}
    assert set(execution) <= {"secretsmanager:GetSecretValue", "kms:Decrypt"}
    # The API keys secret is readable only when ApiKeysSecretArn is set, and only that exact ARN.
    (keys_statement,) = [
        statement
        for policy in template["Resources"]["TaskExecutionRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if "ApiKeysSecretArn" in set(referenced_names(statement))
    ]
    assert keys_statement == {
        "Fn::If": [
            "HasApiKeysSecret",
            {
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": {"Ref": "ApiKeysSecretArn"},
            },
            {"Ref": "AWS::NoValue"},
        ]
    }
    # No task role (what the containers' code runs as) may read any secret.
    for role in ("ApiTaskRole", "WorkerTaskRole"):
        assert not any(action.startswith("secretsmanager:") for action in grants(role)), role


def test_security_groups(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    alb = resources["LoadBalancerSecurityGroup"]["Properties"]
    assert sorted(r["FromPort"] for r in alb["SecurityGroupIngress"]) == [80, 443]
    task = resources["TaskSecurityGroup"]["Properties"]
    assert not task.get("SecurityGroupIngress"), (
        "tasks accept traffic only via TaskIngressFromLoadBalancer"
    )
    ingress = [
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"
    ]
    into_tasks = [r for r in ingress if r["GroupId"] == {"Ref": "TaskSecurityGroup"}]
    assert into_tasks and all(
        r["SourceSecurityGroupId"] == {"Ref": "LoadBalancerSecurityGroup"} for r in into_tasks
    )


# --------------------------------------------------------------------------- 5. moto


def sqs_only_template(template: dict[str, Any]) -> dict[str, Any]:
    """The queue resources and just the parameters they use, as a standalone template."""
    queues = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::SQS::Queue"}
    used = {v["Condition"] for v in queues.values() if "Condition" in v}
    conditions = {k: v for k, v in template["Conditions"].items() if k in used}
    names = set(referenced_names(queues)) | set(referenced_names(conditions))
    params = {k: v for k, v in template["Parameters"].items() if k in names}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": params,
        "Conditions": conditions,
        "Resources": queues,
    }


def test_sqs_redrive_deploys_in_moto(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _require("moto")
    import boto3
    from moto import mock_aws

    for var in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_ENDPOINT_URL_CLOUDFORMATION",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    small = sqs_only_template(template)
    assert set(small["Resources"]) == {*MAIN_QUEUES, "DeadLetterQueue", "PoolQueue"}
    assert "MaxReceiveCount" in small["Parameters"]

    with mock_aws():
        cfn = boto3.client("cloudformation", region_name="us-east-1")
        cfn.create_stack(
            StackName="jobq-sqs",
            TemplateBody=json.dumps(small),
            Parameters=[
                {"ParameterKey": "MaxReceiveCount", "ParameterValue": "5"},
                # A dedicated worker pool's named queue, redriving to the same DLQ.
                {"ParameterKey": "PoolQueueName", "ParameterValue": "media"},
            ],
        )
        status = cfn.describe_stacks(StackName="jobq-sqs")["Stacks"][0]["StackStatus"]
        assert status == "CREATE_COMPLETE"
        urls = {
            r["LogicalResourceId"]: r["PhysicalResourceId"]
            for r in cfn.list_stack_resources(StackName="jobq-sqs")["StackResourceSummaries"]
        }
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq_arn = sqs.get_queue_attributes(
            QueueUrl=urls["DeadLetterQueue"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        assert urls["DefaultQueue"].endswith("/jobq-default")
        assert urls["PoolQueue"].endswith("/jobq-media")
        for queue in (*MAIN_QUEUES, "PoolQueue"):
            attributes = sqs.get_queue_attributes(QueueUrl=urls[queue], AttributeNames=["All"])[
                "Attributes"
            ]
            redrive = json.loads(attributes["RedrivePolicy"])
            assert redrive["deadLetterTargetArn"] == dlq_arn, queue
            assert int(redrive["maxReceiveCount"]) == 5, queue
        dlq_attributes = sqs.get_queue_attributes(
            QueueUrl=urls["DeadLetterQueue"], AttributeNames=["All"]
        )
        assert "RedrivePolicy" not in dlq_attributes["Attributes"]

        # And the policy works: a message received 5 times without deletion lands in the DLQ.
        # (WaitTimeSeconds=0: the queues long-poll 20 s by default.)
        def receive(queue: str) -> list[dict[str, Any]]:
            got = sqs.receive_message(QueueUrl=urls[queue], VisibilityTimeout=0, WaitTimeSeconds=0)
            return got.get("Messages", [])

        sqs.send_message(QueueUrl=urls["DefaultQueue"], MessageBody='{"job_id": "x"}')
        for _ in range(5):
            assert len(receive("DefaultQueue")) == 1
        assert receive("DefaultQueue") == []
        dead = receive("DeadLetterQueue")
        assert [m["Body"] for m in dead] == ['{"job_id": "x"}']
