"""`jobq dev` on fauxqs instead of moto: the fast local stack (for a load test on a laptop).

moto's server is single-threaded Python and slows down with queue depth: `make dev` runs
13-26 no-op jobs/s with moto at 100% of a core. fauxqs (Node, `npm install --prefix bench`)
serves the same SQS API at thousands of calls per second. This starts fauxqs on 127.0.0.1,
creates the dev queues on it and runs `jobq dev` with SQS_QUEUE_URL & co pointing there
(`jobq dev` starts moto only when no queue is configured).

    npm install --prefix bench && .venv/bin/python bench/dev_fauxqs.py [jobq dev args...]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from stack import Stack, jobq_command


def main(argv: list[str]) -> int:
    """Start fauxqs, create the queues, run `jobq dev` on them; its exit status."""
    from app.cli.dev import DEV_DLQ, DEV_MAX_RECEIVE_COUNT
    from app.config import Settings
    from app.sqs.queue import ensure_queues, make_sqs_client

    # SIGTERM (like Ctrl-C) runs the finally below: fauxqs is stopped with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    stack = Stack(keep_logs=False)
    try:
        endpoint = stack.start_fauxqs()
        client = make_sqs_client(Settings(sqs_endpoint_url=endpoint))
        urls = {}
        for priority in ("high", "default", "low"):
            urls[priority], dlq = ensure_queues(
                client, f"jobq-{priority}", DEV_DLQ, max_receive_count=DEV_MAX_RECEIVE_COUNT
            )
        env = dict(
            os.environ,
            SQS_ENDPOINT_URL=endpoint,
            SQS_QUEUE_URL=urls["default"],
            SQS_HIGH_QUEUE_URL=urls["high"],
            SQS_LOW_QUEUE_URL=urls["low"],
            SQS_DLQ_URL=dlq,
        )
        print(f"fauxqs on {endpoint} (instead of moto)", flush=True)
        dev = subprocess.Popen(jobq_command("dev", *argv), env=env)
        try:
            return dev.wait()
        finally:
            if dev.poll() is None:  # we were stopped: `jobq dev` stops its API, worker, PG
                dev.send_signal(signal.SIGINT)
                dev.wait(30)
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
