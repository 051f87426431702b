"""Embedded PostgreSQL (pgserver) and an in-process SQS server (moto) for dev and tests."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import JobqError

log = logging.getLogger("jobq.devstack")


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) an embedded PostgreSQL under data_dir; return its URL and handle."""
    import pgserver  # local extra: not installed in production images

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    return server.get_uri(), server


@dataclass
class SqsServer:
    """moto's SQS-compatible server on 127.0.0.1, started in this process."""

    port: int = 0
    _server: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The http:// endpoint clients should use."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SqsServer:
        """Start serving; port 0 picks a free port."""
        from moto.server import ThreadedMotoServer

        if self.port and not port_is_free(self.port):
            # moto's server would wait forever for a port it cannot bind.
            raise JobqError(f"port {self.port} is in use; set JOBQ_DEV_SQS_PORT to another port")
        # moto validates credentials loosely but boto3 insists on having some.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server._server.server_port  # the real port when 0 was asked
        return self

    def stop(self) -> None:
        """Stop serving (moto keeps queue state in-process, so a restart keeps the queues)."""
        if self._server is not None:
            self._server.stop()
            self._server = None


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
