"""Base images are pinned by digest everywhere, and scripts/pin-images.sh refreshes the pins.

The script needs a registry; here none is reachable, so it is run twice: with no registry tool
on PATH (it must stop, say why and change nothing) and with a stand-in `crane` that answers
one digest (it must rewrite every pin, keep the tags, and then report the pins current).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.test_deploy import DOCKERFILES, parse_dockerfile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pin-images.sh"
PINNED_FILES = ("Dockerfile.api", "Dockerfile.worker", "docker-compose.yml", "infra/README.md")
PIN = re.compile(
    r"^(?P<image>[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9._-]+)@(?P<digest>sha256:[0-9a-f]{64})$"
)
# What the script itself calls; a PATH of just these has no docker, skopeo or crane.
SCRIPT_TOOLS = ("bash", "grep", "sort", "sed", "head", "cut", "sha256sum", "dirname", "cat")


def used_images() -> dict[str, str]:
    """image reference -> where, for every base image the Dockerfiles and compose use."""
    used: dict[str, str] = {}
    for path in DOCKERFILES.values():
        for keyword, args in parse_dockerfile(path):
            if keyword == "FROM":
                used[args.split()[0]] = path.name
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        if "image" in service:
            used[service["image"]] = f"docker-compose.yml services.{name}"
    return used


def test_every_base_image_is_pinned_by_digest_and_documented() -> None:
    used = used_images()
    assert len(used) == 3, used  # python:3.11-slim, postgres:16, elasticmq-native
    digests: dict[str, str] = {}
    readme = (ROOT / "infra" / "README.md").read_text(encoding="utf-8")
    for ref, where in used.items():
        match = PIN.match(ref)
        assert match, f"{where}: {ref} is not NAME:TAG@sha256:DIGEST"
        assert digests.setdefault(match["image"], match["digest"]) == match["digest"]
        assert ref in readme, f"infra/README.md should list the pinned {ref}"
    # Any pin the README mentions is one the files use (no stale documentation).
    for ref in re.findall(r"[a-z0-9][a-z0-9./_-]*:[\w.-]+@sha256:[0-9a-f]{64}", readme):
        assert ref in used, f"infra/README.md lists {ref}, which nothing uses"


def _tools_path(tmp_path: Path, extra: dict[str, str] | None = None) -> str:
    """A PATH directory holding only the script's own tools (and any `extra` stand-ins)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SCRIPT_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is missing"
        (bin_dir / tool).symlink_to(found)
    for name, body in (extra or {}).items():
        (bin_dir / name).write_text(body, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def _copy_pinned_files(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in PINNED_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    return root


def _run(root: Path, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path, "PIN_ROOT": str(root)}
    return subprocess.run(  # noqa: S603 - fixed argv
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_pin_script_fails_clearly_without_a_registry(tmp_path: Path) -> None:
    root = _copy_pinned_files(tmp_path)
    before = {name: (root / name).read_text() for name in PINNED_FILES}
    proc = _run(root, _tools_path(tmp_path))
    assert proc.returncode == 1
    assert "cannot resolve" in proc.stderr and "nothing was changed" in proc.stderr
    assert "skopeo" in proc.stderr and "crane" in proc.stderr
    assert {name: (root / name).read_text() for name in PINNED_FILES} == before


def test_pin_script_rewrites_every_pin_from_the_registry(tmp_path: Path) -> None:
    root = _copy_pinned_files(tmp_path)
    new = "sha256:" + "ab" * 32
    crane = f'#!/bin/bash\n[ "$1" = digest ] && [ -n "$2" ] && echo {new}\n'
    path = _tools_path(tmp_path, {"crane": crane})

    check = _run(root, path, "--check")
    assert check.returncode == 1 and "out of date" in check.stderr
    assert (root / "Dockerfile.api").read_text() == (ROOT / "Dockerfile.api").read_text()

    proc = _run(root, path)
    assert proc.returncode == 0, proc.stderr
    for name in PINNED_FILES:
        text = (root / name).read_text()
        pins = re.findall(r"[\w./-]+:[\w.-]+@(sha256:[0-9a-f]{64})", text)
        assert pins and set(pins) == {new}, name
    assert "FROM python:3.11-slim@" + new in (root / "Dockerfile.api").read_text()
    assert "image: postgres:16@" + new in (root / "docker-compose.yml").read_text()

    again = _run(root, path, "--check")
    assert again.returncode == 0 and "pins are current" in again.stdout
