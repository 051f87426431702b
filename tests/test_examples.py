"""Deploying your own tasks (issue 16, part 5): the thumbnailer example, installed the way its
image installs it, runs in a worker while the API has none of its code."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

import jobq
from app.config import Settings
from tests.helpers import ROOT, api_process, start_worker_process, stop_process, wait_for
from tests.test_deploy import parse_dockerfile

EXAMPLE = ROOT / "examples" / "thumbnailer"


@pytest.fixture(scope="module")
def example_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the example, pip-installed as its Dockerfile does on top of
    the worker image (whose site-packages hold jobq: here, this environment's)."""
    venv = tmp_path_factory.mktemp("example") / "venv"
    # No pip of its own (seconds saved): this environment's pip is visible through the .pth.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    base = sysconfig.get_paths()["purelib"]
    # addsitedir, not a bare path: the base's own .pth files (the editable jobq) count too.
    Path(site, "jobq-base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(EXAMPLE)],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    return python


def _importable(python: Path | str, module: str, cwd: Path) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code], cwd=cwd).returncode == 0


def test_api_without_the_example_serves_a_worker_with_it(
    example_python: Path, settings: Settings, procs_dir: Path, tmp_path: Path, db: Any
) -> None:
    assert importlib.util.find_spec("thumbnailer") is None  # not in this (the API's) env
    assert not _importable(sys.executable, "thumbnailer", tmp_path)
    assert _importable(example_python, "thumbnailer.tasks", tmp_path)
    source = tmp_path / "photo.png"
    Image.new("RGB", (800, 600), (10, 120, 200)).save(source)
    out = tmp_path / "thumbs"

    # JOBQ_TASK_MODULES is set for the API too (one shared environment, as in many stacks): it
    # must not import it, or this API could not even start.
    modules = {"JOBQ_TASK_MODULES": "thumbnailer.tasks"}
    with api_process(settings, procs_dir / "api.log", **modules) as (url, _):
        worker = start_worker_process(
            settings,
            procs_dir / "worker.log",
            python=example_python,
            cwd=tmp_path,
            THUMBNAILER_OUTPUT_DIR=str(out),
            **modules,
        )
        try:
            client = jobq.Client(url)
            wait_for(
                lambda: any(t["name"] == "thumbnail" and t["live"] for t in client.tasks()),
                timeout=60,
                what="the worker to publish the thumbnail task",
            )
            job = client.submit("thumbnail", {"source": source.as_uri(), "sizes": [64, 200]})
            done = client.wait(job.id, timeout=60)
            assert done.status == "succeeded", (done, (procs_dir / "worker.log").read_text())
            assert done.result is not None
            dims = [(t["width"], t["height"]) for t in done.result["thumbnails"]]
            assert dims == [(64, 48), (200, 150)]
            assert (out / str(job.id) / "200.png").exists()
            # The example's defaults reached the job through the catalogue.
            assert done.max_attempts == 5 and done.timeout_seconds == 120

            with pytest.raises(jobq.InvalidInput) as too_big:
                client.submit("thumbnail", {"source": source.as_uri(), "sizes": [5000]})
            assert too_big.value.field == "payload.sizes.0" and too_big.value.status == 422
            with pytest.raises(jobq.InvalidInput) as no_source:
                client.submit("thumbnail", {"sizes": [64]})
            assert no_source.value.field == "payload.source"
            with pytest.raises(jobq.InvalidInput) as extra:
                client.submit("thumbnail", {"source": source.as_uri(), "colour": "red"})
            assert extra.value.field == "payload.colour"
        finally:
            stop_process(worker, grace=30)


def test_example_image_builds_from_the_worker_image_and_compose_runs_it() -> None:
    steps = parse_dockerfile(EXAMPLE / "Dockerfile")
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG")
    assert args["JOBQ_WORKER_IMAGE"] == "jobq-worker"
    assert ("FROM", "${JOBQ_WORKER_IMAGE}") in steps
    run = " ".join(a for k, a in steps if k == "RUN")
    assert "pip install" in run and "/src/thumbnailer" in run
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "JOBQ_TASK_MODULES=thumbnailer.tasks" in env
    assert ("USER", "10001:10001") in steps  # back to the base image's unprivileged user

    override = yaml.safe_load((EXAMPLE / "compose.yaml").read_text())["services"]
    assert set(override) == {"worker"}  # the api service stays the unchanged jobq image
    build = override["worker"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).exists()
    assert override["worker"]["environment"]["JOBQ_TASK_MODULES"] == "thumbnailer.tasks"

    template = (ROOT / "infra" / "jobq.yaml").read_text()
    assert "Name: JOBQ_TASK_MODULES, Value: !Ref TaskModules" in template
    readme = (ROOT / "infra" / "README.md").read_text()
    assert "TaskModules" in readme and "examples/thumbnailer" in readme


def test_the_example_passes_its_own_tests_where_it_is_installed(
    example_python: Path, tmp_path: Path
) -> None:
    tests = EXAMPLE / "tests"
    run = subprocess.run(
        [example_python, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,  # the installed package, not the source tree, is imported
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
