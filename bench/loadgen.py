"""HTTP load generator for POST /jobs (run as its own process by run.py).

`concurrency` asyncio tasks, each with its own keep-alive connection, each sending its next
request as soon as the previous one answered (closed loop). The HTTP client is a minimal
HTTP/1.1 one on asyncio streams (`--client httpx` uses httpx.AsyncClient instead: on 2 cores
httpx itself saturates a core at 32+ clients and becomes the bottleneck). Requests in the
first `--warmup` seconds are not counted. Prints one JSON object on stdout.

    python bench/loadgen.py --url http://127.0.0.1:8000 --concurrency 32 --duration 10
    python bench/loadgen.py --url ... --concurrency 32 --requests 5000      # exactly N jobs
    python bench/loadgen.py --url ... --batch 100 --concurrency 8 --duration 10  # /jobs/batch

BENCH_API_KEY, when set, is sent as `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlparse

import httpx

BODY = {"task": "echo", "payload": {}}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (a few µs per request).

    httpx's pool costs ~1 ms of CPU per request and saturates a core at 32+ connections on
    this machine, so by default the load generator speaks HTTP/1.1 itself.
    """

    def __init__(self, url: str, extra_headers: str = "") -> None:
        self.extra = extra_headers
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{self.extra}\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length, chunked, close = 0, False, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value:
                    chunked = True
                elif name == "connection" and value == "close":
                    close = True
            if chunked:
                while True:
                    size = int((await self.reader.readline()).strip() or b"0", 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await self.reader.readexactly(length)
            if close:
                await self.aclose()
            return status
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    jobs_ok = 0
    if args.batch:
        path = "/jobs/batch"
        body: Any = (
            {"jobs": [BODY] * args.batch} if args.batch_shape == "object" else [BODY] * args.batch
        )
    else:
        path, body = "/jobs", BODY
    payload = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    api_key = os.environ.get("BENCH_API_KEY", "")
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    raw_headers = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    remaining = args.requests
    cpu0 = time.process_time()
    start = time.perf_counter()
    count_from = start + args.warmup
    stop_at = count_from + args.duration if not args.requests else float("inf")
    measured_start: float | None = None
    measured_end = start

    httpx_client: httpx.AsyncClient | None = None
    if args.client == "httpx":
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
        httpx_client = httpx.AsyncClient(base_url=args.url, limits=limits, timeout=30.0)

    async def one_client() -> None:
        nonlocal remaining, jobs_ok, measured_start, measured_end
        raw = RawClient(args.url, raw_headers) if httpx_client is None else None
        try:
            while True:
                if args.requests:
                    if remaining <= 0:
                        return
                    remaining -= 1
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    if raw is not None:
                        code = str(await asyncio.wait_for(raw.post(path, payload), 30))
                    else:
                        assert httpx_client is not None
                        resp = await httpx_client.post(path, content=payload, headers=headers)
                        code = str(resp.status_code)
                except (
                    TimeoutError,
                    httpx.HTTPError,
                    OSError,
                    ValueError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    code = type(exc).__name__
                    if raw is not None:
                        await raw.aclose()  # a timed-out connection is in an unknown state
                t1 = time.perf_counter()
                if args.requests or t0 >= count_from:
                    if measured_start is None:
                        measured_start = t0
                    measured_end = max(measured_end, t1)
                    latencies.append(t1 - t0)
                    statuses[code] += 1
                    if code in ("200", "201", "202"):
                        jobs_ok += args.batch or 1
        finally:
            if raw is not None:
                await raw.aclose()

    try:
        await asyncio.gather(*(one_client() for _ in range(args.concurrency)))
    finally:
        if httpx_client is not None:
            await httpx_client.aclose()

    elapsed = measured_end - (measured_start or measured_end) or 1e-9
    cpu = time.process_time() - cpu0
    latencies.sort()
    ok = sum(n for code, n in statuses.items() if code in ("200", "201", "202"))
    return {
        "client": args.client,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "requests": len(latencies),
        "ok": ok,
        "jobs_ok": jobs_ok,
        "statuses": dict(statuses),
        "seconds": elapsed,
        "req_per_s": ok / elapsed,
        "jobs_per_s": jobs_ok / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
        "loadgen_cpu_percent": 100 * cpu / max(1e-9, time.perf_counter() - start),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--requests", type=int, default=0, help="send exactly N, no warm-up")
    parser.add_argument("--batch", type=int, default=0, help="POST /jobs/batch with N jobs each")
    parser.add_argument("--batch-shape", choices=("object", "list"), default="object")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: minimal asyncio HTTP/1.1 (default); httpx: httpx.AsyncClient",
    )
    args = parser.parse_args()
    if args.requests:
        args.warmup = 0.0
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
