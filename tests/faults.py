"""Fault injection for tests and drills: a cuttable proxy in front of PostgreSQL or SQS, and a
blackhole that accepts connections and never answers.

`Proxy` forwards a TCP port (SQS) or a Unix socket (the embedded PostgreSQL listens on one) to
the real server; `cut()` closes every connection and refuses new ones until `restore()`;
`hang()` keeps accepting and reading but forwards nothing (a partition, as seen by clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url


class Proxy:
    """A proxy on 127.0.0.1 (TCP) or in a temporary directory (Unix socket), in a thread."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.mode = "forward"  # forward | cut | hang
        self.unix_dir: str | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    # -- control ------------------------------------------------------------------------

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        self.mode = "cut"
        self._call(self._close_all())

    def hang(self) -> None:
        """Accept and read, but forward nothing and answer nothing (existing links go silent)."""
        self.mode = "hang"

    def restore(self) -> None:
        """Forward again (new connections)."""
        self.mode = "forward"

    def close(self) -> None:
        """Stop listening and end the thread."""
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- addresses ------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT, for an HTTP server behind a TCP proxy (SQS)."""
        return f"http://127.0.0.1:{self.port}"

    def database_url(self, real_url: str) -> str:
        """`real_url` pointed at this proxy (a Unix-socket proxy for a socket URL)."""
        url = make_url(real_url)
        if self.unix_dir is not None:
            return url.set(query={**url.query, "host": self.unix_dir}).render_as_string(False)
        return url.set(host="127.0.0.1", port=self.port).render_as_string(False)

    # -- machinery ------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if isinstance(self._target, str):  # a Unix socket path
            self.unix_dir = tempfile.mkdtemp(prefix="jobq-proxy-")
            name = os.path.basename(self._target)
            path = str(Path(self.unix_dir) / name)
            self._server = await asyncio.start_unix_server(self._serve, path=path)
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.close()
            return
        self._writers.add(writer)
        try:
            if isinstance(self._target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self._target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                while self.mode == "hang":
                    await asyncio.sleep(0.05)  # holding the bytes: the peer hears nothing
                if self.mode == "cut":
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)

    async def _close_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._close_all()
        if self._server is not None:
            self._server.close()


def postgres_socket(database_url: str) -> str:
    """The Unix socket file of a socket-URL PostgreSQL (the embedded one)."""
    url = make_url(database_url)
    host = str(url.query.get("host", ""))
    return str(Path(host) / f".s.PGSQL.{url.port or 5432}")


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and drop what is held."""
        self._stop.set()
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self._sock.close()
