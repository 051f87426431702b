"""Run a command with SQS_ENDPOINT_URL pointing at a fauxqs started for it (make drills).

moto's server slows down with queue depth, so drills with thousands of jobs use fauxqs; drills
that stop and restart the SQS server still run their own moto server.
"""

from __future__ import annotations

import os
import subprocess
import sys

from stack import Stack


def main(argv: list[str]) -> int:
    """Start fauxqs, run argv with SQS_ENDPOINT_URL set, stop fauxqs; return argv's status."""
    if not argv:
        print("usage: with_fauxqs.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    stack = Stack(keep_logs=False)
    try:
        endpoint = stack.start_fauxqs()
        print(f"fauxqs on {endpoint}", flush=True)
        return subprocess.call(argv, env=dict(os.environ, SQS_ENDPOINT_URL=endpoint))
    finally:
        stack.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
