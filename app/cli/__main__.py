"""`python -m app.cli` runs the `jobq` command."""

import sys

from app.cli.main import main

# Guarded: a worker's isolated job runner (multiprocessing "spawn") imports this module again.
if __name__ == "__main__":
    sys.exit(main())
