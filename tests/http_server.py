"""A scripted HTTP server on 127.0.0.1 for tests of outbound requests (the `http` task).

Paths (query `key=` makes per-test counters independent):
  /ok                         200 JSON, with an X-Request-Id header
  /echo                       200 JSON describing the request (method, headers, body)
  /fail-once                  500 on the first hit of a key, then 200
  /limited-once?after=N       429 with Retry-After: N on the first hit of a key, then 200
  /status/<code>?retry_after= that status (optional Retry-After header), a short text body
  /slow                       answers only when the server stops (or after 10 s)
  /large?size=N               N bytes of text (default 1 MiB), written in chunks
  /binary                     bytes with NUL in them, application/octet-stream
  /redirect?to=URL            302 to URL
  /loop                       302 to itself, forever
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BINARY = bytes(range(256)) * 4


@dataclass
class Hit:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the tests assert on `hits` instead."""

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        hit = Hit(self.command, parts.path, {k.lower(): v for k, v in self.headers.items()}, body)
        count = self.server.record(hit, f"{parts.path}?{query.get('key', '')}")
        # The client may give up (timeout, size cap) mid-answer: expected in these tests.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(parts.path, query, count, hit)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def _route(self, path: str, query: dict[str, str], count: int, hit: Hit) -> None:
        if path == "/ok":
            self._send(200, b'{"ok": true}', "application/json", {"X-Request-Id": "r-1"})
        elif path == "/echo":
            echo = {"method": hit.method, "headers": hit.headers, "body": hit.body.decode()}
            self._send(200, json.dumps(echo).encode(), "application/json")
        elif path == "/fail-once":
            self._send(500 if count == 1 else 200, b"boom" if count == 1 else b"fine")
        elif path == "/limited-once":
            extra = {"Retry-After": query.get("after", "1")}
            self._send(429, b"slow down", extra=extra) if count == 1 else self._send(200, b"ok")
        elif path.startswith("/status/"):
            ra = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
            self._send(int(path.rsplit("/", 1)[1]), b"status body text", extra=ra)
        elif path == "/slow":
            self.server.released.wait(10)  # the behaviour under test: a server that stalls
            self._send(200, b"too late")
        elif path == "/large":
            self._send_large(int(query.get("size", 1024 * 1024)))
        elif path == "/binary":
            self._send(200, BINARY, "application/octet-stream")
        elif path == "/redirect":
            self._send(302, b"", extra={"Location": query["to"]})
        elif path == "/loop":
            self._send(302, b"", extra={"Location": "/loop"})
        else:
            self._send(404, b"no such path")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_large(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * 65536
        for start in range(0, size, len(chunk)):
            self.wfile.write(chunk[: size - start])


class ScriptedServer(ThreadingHTTPServer):
    """The server; `hits` lists every request received, `url(path)` builds addresses."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[Hit] = []
        self.released = threading.Event()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        # A short poll: stop() waits for the serving loop's next look (0.5 s by default, and
        # most tests that use this server take less than that).
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """An http:// URL of `path` on this server."""
        return f"http://{host}:{self.port}{path}"

    def record(self, hit: Hit, key: str) -> int:
        """Note a request; how many times `key` was hit, this one included."""
        with self._lock:
            self.hits.append(hit)
            self._counts[key] += 1
            return self._counts[key]

    def start(self) -> ScriptedServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release stalled answers, stop serving and close the socket."""
        self.released.set()
        self.shutdown()
        self.server_close()
        self._thread.join(10)
