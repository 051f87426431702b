"""The lock files (requirements/*.lock, made by `make lock`) against pyproject.toml and .venv.

Offline and fast: reads the lock files, pyproject.toml and the installed distributions' metadata.

* .venv holds exactly what requirements/dev.lock pins, at the pinned versions (`make install`
  installs the lock), so `make test` tests the locked set;
* every base dependency in pyproject.toml, and what its extras pull in, is pinned in
  requirements/runtime.lock (what the images install), within the range pyproject.toml allows;
* requirements/local.lock (what `make dev` installs) pins the `local` extra on top of the
  runtime set, and no test tool;
* runtime.lock, local.lock and dev.lock agree on every version: the tests run what production
  and `make dev` run;
* every lock is hash-locked and names no index, mirror or local path.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DEV_LOCK = ROOT / "requirements" / "dev.lock"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
LOCAL_LOCK = ROOT / "requirements" / "local.lock"
BENCH_REQUIREMENTS = ROOT / "bench" / "requirements.txt"

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
# The project itself (installed editable, --no-deps) and the installer's own packages.
NOT_LOCKED = {"jobq", "pip", "setuptools", "wheel"}
FIX = "run `make install` (or `make lock` after changing pyproject.toml)"


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, version in PIN.findall(path.read_text(encoding="utf-8")):
        key = normalize(name)
        assert key not in found, f"{path.name} pins {key} twice"
        found[key] = version
    assert found, f"{path.name} pins nothing"
    return found


def installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue  # a broken dist-info directory without metadata
        key = normalize(name)
        assert found.get(key, dist.version) == dist.version, (
            f"{key} is installed twice ({found[key]} and {dist.version}): {FIX}"
        )
        found[key] = dist.version
    return found


def extra_requirements(req: Requirement) -> list[Requirement]:
    """What the installed distribution of `req` requires for the extras `req` asks for."""
    dist = metadata.distribution(req.name)
    extras = req.extras | {""}
    wanted = []
    for spec in dist.requires or []:
        sub = Requirement(spec)
        if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
            wanted.append(sub)
    return wanted


def bench_only(locked: set[str]) -> set[str]:
    """Packages `make bench` adds to .venv on top of the lock: bench/requirements.txt and
    everything those pull in that the lock does not pin (locked ones must still match)."""
    todo = []
    for line in BENCH_REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            todo.append(Requirement(line))
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        key = normalize(req.name)
        if key in seen:
            continue
        try:
            todo.extend(extra_requirements(req))
        except metadata.PackageNotFoundError:
            continue  # not installed: nothing to excuse
        seen.add(key)
    return seen - locked


def test_venv_is_exactly_the_dev_lock() -> None:
    locked = pins(DEV_LOCK)
    have = {k: v for k, v in installed().items() if k not in NOT_LOCKED}
    bench = bench_only(set(locked))
    unlocked = sorted(k for k in have if k not in locked and k not in bench)
    assert not unlocked, (
        f".venv has packages requirements/dev.lock does not pin: {unlocked}. Installed by hand? "
        f"`.venv/bin/pip uninstall {' '.join(unlocked)}`; a new dependency belongs in "
        "pyproject.toml, then `make lock`"
    )
    wrong = sorted(
        f"{k}: installed {have[k]}, locked {v}" for k, v in locked.items() if have.get(k) != v
    )
    assert not wrong, f".venv differs from requirements/dev.lock: {wrong}; {FIX}"


def test_runtime_lock_pins_every_base_dependency() -> None:
    locked = pins(RUNTIME_LOCK)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    problems = []
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        key = normalize(req.name)
        if key not in locked:
            problems.append(f"{spec}: not pinned")
        elif not req.specifier.contains(locked[key], prereleases=True):
            problems.append(f"{spec}: pinned {locked[key]}, outside the range")
        # --strip-extras drops `[standard]` from the pin: what the extra pulls in must be there.
        if req.extras:
            for sub in extra_requirements(req):
                if normalize(sub.name) not in locked:
                    problems.append(f"{spec}: {sub} (from the extra) not pinned")
    assert not problems, f"requirements/runtime.lock vs pyproject.toml: {problems}; make lock"


def test_runtime_local_and_dev_locks_agree() -> None:
    runtime, local, dev = pins(RUNTIME_LOCK), pins(LOCAL_LOCK), pins(DEV_LOCK)
    differ = sorted(
        f"{k}: {name} {v}, {bigger_name} {bigger.get(k, 'missing')}"
        for name, smaller, bigger_name, bigger in (
            ("runtime", runtime, "local", local),
            ("local", local, "dev", dev),
        )
        for k, v in smaller.items()
        if bigger.get(k) != v
    )
    assert not differ, f"make dev and the tests would not run what the images install: {differ}"


def test_local_lock_is_the_dev_server_and_no_test_tool() -> None:
    local = pins(LOCAL_LOCK)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = pyproject["project"]["optional-dependencies"]["local"]
    missing = [spec for spec in wanted if normalize(Requirement(spec).name) not in local]
    assert not missing, f"requirements/local.lock lacks {missing}; make lock"
    tools = {"pytest", "mypy", "ruff", "selenium", "schemathesis", "hypothesis", "cfn-lint"}
    assert not tools & set(local), (
        f"make dev would install test tools: {sorted(tools & set(local))}"
    )


def test_locks_are_hashed_and_portable() -> None:
    for path in (RUNTIME_LOCK, LOCAL_LOCK, DEV_LOCK):
        text = path.read_text(encoding="utf-8")
        # One block per pin: `name==version \` then its --hash lines.
        for block in re.split(r"\n(?=[A-Za-z0-9])", text):
            if PIN.match(block):
                assert "--hash=sha256:" in block, f"{path.name}: no hash for {block.split()[0]}"
        for line in text.splitlines():
            code = line.split("#", 1)[0].strip()
            assert not code.startswith(
                ("-e", "--index-url", "--extra-index-url", "--find-links")
            ), f"{path.name}: {line!r}"
            assert not re.search(r"\bfile:|@ ", code), f"{path.name}: local reference {line!r}"
