"""Network profiles: latency proxies (bench/latency_proxy.py) in front of PostgreSQL and SQS.

`--profile cloud` puts 20 ms of round trip in front of the SQS server and 1 ms in front of
PostgreSQL (AWS's own SQS sizing example and a same-AZ RDS round trip); `--latency SQS[,PG]`
sets other values. The harness's bookkeeping still talks to the servers directly; only the
measured children (API, workers, Celery, raw limits) go through the proxies.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from harness import Bench, Endpoints
from measure import log, pct
from stack import BENCH_DIR, Proc, free_port

PROFILES: dict[str, tuple[float, float]] = {"loopback": (0.0, 0.0), "cloud": (20.0, 1.0)}


@dataclass(frozen=True)
class Rtt:
    """Round trips added in front of the SQS server and PostgreSQL, in milliseconds."""

    sqs_ms: float
    pg_ms: float

    @property
    def name(self) -> str:
        for name, (s, p) in PROFILES.items():
            if (s, p) == (self.sqs_ms, self.pg_ms):
                return name
        return f"latency {self.sqs_ms:g}/{self.pg_ms:g} ms"

    @classmethod
    def parse(cls, spec: str) -> Rtt:
        """ "20" or "20,1" (SQS ms[, PostgreSQL ms]); ValueError if it is not that."""
        parts = [float(x) for x in spec.split(",")]
        if not 1 <= len(parts) <= 2 or any(x < 0 for x in parts):
            raise ValueError(f"expected SQS_MS[,PG_MS], got {spec!r}")
        return cls(parts[0], parts[1] if len(parts) == 2 else 0.0)


def pg_socket(url: str) -> str:
    """The Unix socket path of a pgserver URL (postgresql://postgres:@/postgres?host=DIR)."""
    parsed = urlparse(url)
    host = parse_qs(parsed.query).get("host", [parsed.hostname or ""])[0]
    if not host.startswith("/"):
        raise ValueError(f"expected a Unix-socket PostgreSQL URL, got {url}")
    return f"{host}/.s.PGSQL.{parsed.port or 5432}"


def start_proxy(bench: Bench, name: str, upstream: str, rtt_ms: float) -> tuple[Proc, int]:
    """A latency proxy child in front of `upstream`; (its process, its port)."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "latency_proxy.py"), "--listen", str(port)]
    argv += ["--upstream", upstream, "--rtt-ms", str(rtt_ms)]
    proc = bench.stack.spawn(name, "proxy", argv, env={"PATH": "/usr/bin:/bin"}, capture=True)
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline().decode()
    if not line.startswith("ready"):
        raise RuntimeError(f"{name} did not start: {line!r}")
    return proc, port


def install(bench: Bench, rtt: Rtt) -> dict[str, Any]:
    """Start both proxies, point `bench.endpoints` at them, and measure what they add."""
    servers = bench.servers
    _, pg_port = start_proxy(
        bench, "proxy-pg", "unix:" + pg_socket(servers.database_url), rtt.pg_ms
    )
    sqs = urlparse(servers.sqs_endpoint)
    upstream = f"{sqs.hostname}:{sqs.port}"
    _, sqs_port = start_proxy(bench, "proxy-sqs", upstream, rtt.sqs_ms)
    user = urlparse(servers.database_url).username or "postgres"
    db_path = urlparse(servers.database_url).path
    bench.endpoints = Endpoints(
        f"postgresql://{user}@127.0.0.1:{pg_port}{db_path}", f"http://127.0.0.1:{sqs_port}"
    )
    measured = calibrate(bench)
    log(
        f"profile {rtt.name}: asked SQS +{rtt.sqs_ms:g} ms, PostgreSQL +{rtt.pg_ms:g} ms RTT; "
        f"measured SQS call p50 {measured['sqs_call_p50_ms']:.1f} ms "
        f"(direct {measured['sqs_call_direct_p50_ms']:.1f}), PostgreSQL SELECT 1 p50 "
        f"{measured['pg_select_p50_ms']:.2f} ms (direct {measured['pg_select_direct_p50_ms']:.2f})"
    )
    return {"name": rtt.name, "sqs_rtt_ms": rtt.sqs_ms, "pg_rtt_ms": rtt.pg_ms, **measured}


def calibrate(bench: Bench) -> dict[str, float]:
    """One caller's call time, direct and through the proxies (what the proxy really adds)."""
    import psycopg2

    out: dict[str, float] = {}
    for label, url in (("_direct", bench.servers.database_url), ("", bench.endpoints.database_url)):
        conn = psycopg2.connect(url)
        cur = conn.cursor()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            cur.execute("SELECT 1")
            cur.fetchone()
            times.append(1000 * (time.perf_counter() - t0))
        conn.close()
        out[f"pg_select{label}_p50_ms"] = pct(times[20:], 50)
    queue_url = bench.new_queue("calibrate", redrive=False)[0]
    for label, client in (("_direct", bench.sqs), ("", bench.measured_sqs())):
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
            times.append(1000 * (time.perf_counter() - t0))
        out[f"sqs_call{label}_p50_ms"] = pct(times[5:], 50)
    return out
