"""The `make dev` banner: addresses a user can paste, and Ctrl-C handling (no servers)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time

from sqlalchemy.engine import make_url

from app.cli.dev import StopRequests, banner, cli_exports, http_url, pasteable_url, reap
from app.config import Settings

PGSERVER_URL = "postgresql://postgres:@/postgres?host=/home/me/proj/.jobq/pg"


def _settings(**overrides: object) -> Settings:
    return Settings(database_url="", sqs_queue_url="", **overrides)  # type: ignore[arg-type]


def _env(database_url: str = PGSERVER_URL) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SQS_ENDPOINT_URL": "http://127.0.0.1:9324",
        "SQS_QUEUE_URL": "http://127.0.0.1:9324/000000000000/jobq-default",
        "JOBQ_AUTH": "disabled",
    }


def test_an_empty_password_is_left_out_not_masked() -> None:
    shown = pasteable_url(PGSERVER_URL)
    assert "***" not in shown
    assert shown == PGSERVER_URL  # libpq takes the empty password as written
    parsed = make_url(shown)
    assert (parsed.username, parsed.password, parsed.database) == ("postgres", "", "postgres")
    assert parsed.query["host"] == "/home/me/proj/.jobq/pg"


def test_a_real_password_stays_hidden() -> None:
    shown = pasteable_url("postgresql+psycopg2://jobq:s3cret@db:5432/jobq")
    assert "s3cret" not in shown and "***" in shown
    assert pasteable_url("not a url") == "<unparseable database url>"


def test_http_url_names_an_address_a_client_can_reach() -> None:
    assert http_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert http_url("0.0.0.0", 18100) == "http://127.0.0.1:18100"
    assert http_url("::", 9100) == "http://127.0.0.1:9100"
    assert http_url("::1", 9100) == "http://[::1]:9100"


def test_exports_are_what_jobq_dev_set_and_paste_into_a_shell() -> None:
    env = {**_env(), "AWS_ACCESS_KEY_ID": "test", "HOME": "/home/me"}
    lines = cli_exports(env, _settings(port=18100), inherited={"HOME": "/home/me"})
    assert lines == [
        f"export DATABASE_URL={shlex.quote(PGSERVER_URL)}",
        "export SQS_ENDPOINT_URL=http://127.0.0.1:9324",
        "export SQS_QUEUE_URL=http://127.0.0.1:9324/000000000000/jobq-default",
        "export AWS_ACCESS_KEY_ID=test",
        "export JOBQ_API_URL=http://127.0.0.1:18100",
    ]
    # What the shell would set from each line is the value itself.
    assert shlex.split(lines[0])[1] == "DATABASE_URL=" + PGSERVER_URL


def test_nothing_the_user_set_or_a_password_is_exported() -> None:
    env = _env("postgresql://jobq:s3cret@db/jobq")
    assert cli_exports(env, _settings(), inherited=_env()) == []  # all inherited, port 8000
    own_sqs = {k: v for k, v in _env().items() if k != "DATABASE_URL"}
    assert cli_exports(env, _settings(), inherited=own_sqs) == []  # the password stays unprinted


def test_banner_shows_data_dir_dashboard_metrics_and_exports() -> None:
    embedded = ["PostgreSQL (pgserver, data in /srv/dev/pg)", "SQS (moto server on 127.0.0.1:9324)"]
    text = banner(_env(), _settings(port=18100, metrics_port=18102), embedded, inherited={})
    assert "data in /srv/dev/pg" in text
    assert "  dashboard  http://127.0.0.1:18100/dashboard" in text
    assert "http://127.0.0.1:18102/metrics (worker)" in text
    assert "export JOBQ_API_URL=http://127.0.0.1:18100" in text
    assert "export DATABASE_URL=" in text and "***" not in text
    assert "second Ctrl-C" in text
    assert "make dev-fauxqs" in text  # moto bounds the dev stack's speed: say so


def test_banner_says_when_the_worker_metrics_are_off() -> None:
    text = banner(_env(), _settings(metrics_port=0), [], inherited=_env())
    assert "off (JOBQ_METRICS_PORT=0)" in text
    assert "export" not in text  # port 8000 is the CLI's default; the rest was inherited


def test_first_signal_stops_gracefully_and_the_second_forces() -> None:
    requests = StopRequests(grace_seconds=25)
    requests()
    assert requests.stop.is_set() and not requests.force.is_set()
    requests()
    assert requests.force.is_set()


class _Child:
    """A child that ignores SIGTERM (a job still running), as a Popen stand-in."""

    def __init__(self) -> None:
        self.killed = threading.Event()
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return -9 if self.killed.is_set() else None

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.killed.set()

    def wait(self, timeout: float | None = None) -> int:
        return -9


def test_reap_kills_at_once_when_forced() -> None:
    child, force = _Child(), threading.Event()
    threading.Timer(0.2, force.set).start()
    started = time.monotonic()
    reap([child], grace_seconds=30, force=force)  # type: ignore[list-item]
    assert child.killed.is_set() and child.signals  # asked first, then killed
    assert time.monotonic() - started < 5


def test_reap_waits_out_the_grace_for_a_child_that_stops() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reap([child], grace_seconds=10, force=threading.Event())
        assert child.returncode is not None and child.returncode < 0  # SIGTERM ended it
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
