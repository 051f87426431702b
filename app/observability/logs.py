"""Logs to stdout: one JSON object per line, or readable lines with JOBQ_LOG_FORMAT=console."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from app.config import Settings
from app.observability.trace import trace_id_var

# Standard LogRecord attributes, plus uvicorn's ANSI-coloured duplicate of the message.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    extras = {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RESERVED and not k.startswith("_") and v is not None
    }
    if "trace_id" not in extras and (trace_id := trace_id_var.get()):
        extras["trace_id"] = trace_id
    return extras


class JsonFormatter(logging.Formatter):
    """Timestamp, level, logger, event, and any `extra=` fields (job_id, task, attempt...)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class ConsoleFormatter(logging.Formatter):
    """Readable lines for humans, with the structured fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return f"{line}  {extras}" if extras else line


def configure_logging(settings: Settings) -> None:
    """Route every logger to stdout in the configured format (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in (
        "botocore",
        "boto3",
        "urllib3",
        "werkzeug",
        "pgserver",
        "alembic.runtime.plugins",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
