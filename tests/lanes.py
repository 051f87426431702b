"""Test lanes, marked from what each test needs: `make test-fast` runs the `unit` lane.

A test is in the `postgres`, `sqs`, `browser` or `processes` lane when it needs that (several
at once is common), and in `unit` when it needs none of them. What it needs is read, not
declared: the fixtures it uses (with theirs) and, for what a test or fixture does itself, the
names its code and the test helpers it calls refer to (a call of `subprocess.run`, or of a
helper that ends in one, puts it in `processes`). Nothing to keep up to date by hand.
"""

from __future__ import annotations

import inspect
import subprocess
import types
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest

LANES = {
    "postgres": "needs PostgreSQL (embedded pgserver, or DATABASE_URL)",
    "sqs": "needs an SQS server (moto's in this process, or SQS_ENDPOINT_URL)",
    "browser": "drives headless Chromium",
    "processes": "starts programs or child processes",
    "unit": "none of the above: the make test-fast lane",
}

# The fixtures that start a server (every fixture built on them inherits the lane).
SERVER_FIXTURES = {"server_url": "postgres", "sqs_endpoint": "sqs"}
# What, referred to by a test's code (or a helper's it calls), puts it in a lane.
PROCESS_CALLS: set[Any] = {subprocess, subprocess.run, subprocess.Popen, subprocess.check_output}
BROWSER_MODULE = "tests.browser"


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """`code` and the code of the functions, lambdas and comprehensions defined inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


@cache
def _needs_of(func: Callable[..., Any]) -> frozenset[str]:
    """Lanes that calling `func` needs, following the test helpers (tests.*) it refers to."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None:
        return frozenset()
    scope = getattr(func, "__globals__", {})
    needs: set[str] = set()
    for inner in _code_objects(code):
        for name in inner.co_names:
            target = scope.get(name)
            if target is None:
                continue
            if hasattr(target, "__wrapped__"):  # @cache, @contextmanager, ...
                target = inspect.unwrap(target)
            if any(target is call for call in PROCESS_CALLS):
                needs.add("processes")
            elif getattr(target, "__module__", None) == BROWSER_MODULE:
                needs.add("browser")
            elif _is_test_helper(target) and target is not func:
                needs |= _needs_of(target)
    return frozenset(needs)


def _is_test_helper(target: Any) -> bool:
    module = getattr(target, "__module__", "") or ""
    return inspect.isfunction(target) and module.startswith("tests.") and module != __name__


def lanes_of(item: pytest.Item) -> set[str]:
    """The lanes a collected test belongs to."""
    needs: set[str] = set()
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        if name in SERVER_FIXTURES:
            needs.add(SERVER_FIXTURES[name])
        for fixturedef in info.name2fixturedefs.get(name, ()) if info else ():
            needs |= _needs_of(fixturedef.func)
    if isinstance(item, pytest.Function):
        needs |= _needs_of(item.obj)
    return needs or {"unit"}


def pytest_configure(config: pytest.Config) -> None:
    """Register the lane markers (the suite runs with --strict-markers)."""
    for lane, meaning in LANES.items():
        config.addinivalue_line("markers", f"{lane}: {meaning} (set by tests/lanes.py)")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its lanes before -m selects."""
    for item in items:
        for lane in sorted(lanes_of(item)):
            item.add_marker(lane)
