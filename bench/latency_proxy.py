"""A TCP proxy that adds a fixed delay to every byte, each way (toxiproxy is not installable here).

Each direction of each connection delays every chunk it reads by `delay` seconds (half the RTT
to add) before writing it on: chunks are timestamped on arrival and written when due, so
pipelined requests, concurrent connections and bandwidth are not serialised by the delay (it
is a latency, not a rate limit). The event loop runs on select(), whose timeout has microsecond
resolution (epoll rounds up to whole milliseconds, which would turn 0.5 ms into 1 ms).

    python bench/latency_proxy.py --listen 18401 --upstream 127.0.0.1:4566 --rtt-ms 20
    python bench/latency_proxy.py --listen 18402 --upstream unix:/tmp/pg/.s.PGSQL.5432 --rtt-ms 1

Prints "ready <port>" on stdout once it listens; runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import selectors
import signal
import socket
import sys

HIGH_WATER = 1 << 20  # bytes waiting on one side before the other side stops reading


class Side(asyncio.Protocol):
    """One end of a proxied connection; what it reads is written to `peer` `delay` s later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.pending: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.sent_eof = False  # our end's EOF was passed on to the peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._queue(data)

    def eof_received(self) -> bool:
        self._queue(None)
        return True  # keep our write half open until the delayed data is through

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.sent_eof:
            self._queue(None)

    def _queue(self, data: bytes | None) -> None:
        self.pending.append((self.loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def _flush(self) -> None:
        """Write every chunk that is due to the peer, then wait for the next one."""
        self.timer = None
        if self.peer is None:
            return  # still connecting upstream: scheduled again once connected
        now = self.loop.time()
        while self.pending and self.pending[0][0] <= now + 5e-5:
            _, data = self.pending.popleft()
            peer = self.peer.transport
            if peer is None or peer.is_closing():
                continue
            if data is None:
                if self.sent_eof:
                    continue
                self.sent_eof = True
                if self.peer.sent_eof or not peer.can_write_eof():
                    peer.close()  # both ends are done: close both sockets
                    if self.transport is not None:
                        self.transport.close()
                else:
                    peer.write_eof()
                continue
            peer.write(data)
            if peer.get_write_buffer_size() > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
                self.loop.call_later(0.01, self._resume_when_drained)
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def _resume_when_drained(self) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if self.transport is None or self.transport.is_closing():
            return
        if peer is not None and peer.get_write_buffer_size() > HIGH_WATER // 2:
            self.loop.call_later(0.01, self._resume_when_drained)
        else:
            self.transport.resume_reading()


async def serve(listen: int, upstream: str, delay: float) -> None:
    """Accept on 127.0.0.1:`listen`, connect each client to `upstream`, delay both ways."""
    loop = asyncio.get_running_loop()

    async def connect_upstream(client: Side) -> None:
        server = Side(loop, delay)
        try:
            if upstream.startswith("unix:"):
                await loop.create_unix_connection(lambda: server, upstream[5:])
            else:
                host, _, port = upstream.rpartition(":")
                await loop.create_connection(lambda: server, host, int(port))
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, server.peer = server, client
        # Bytes the client sent while we connected: they keep their arrival time.
        if client.pending and client.timer is None:
            client.timer = loop.call_at(client.pending[0][0], client._flush)

    def accept() -> Side:
        client = Side(loop, delay)
        loop.call_soon(lambda: loop.create_task(connect_upstream(client)))
        return client

    srv = await loop.create_server(accept, "127.0.0.1", listen, backlog=512)
    port = srv.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    srv.close()


def main() -> int:
    """Parse the command line and proxy until SIGTERM."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--upstream", required=True, help="HOST:PORT or unix:/path/to/socket")
    p.add_argument("--rtt-ms", type=float, required=True, help="round trip to add (half each way)")
    args = p.parse_args()
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(args.listen, args.upstream, args.rtt_ms / 2000))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
