"""Configuration: every setting comes from an environment variable (twelve-factor)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.sqs_limits import MAX_DELAY_SECONDS, MAX_VISIBILITY_TIMEOUT, MAX_WAIT_SECONDS


class Settings(BaseSettings):
    """All jobq settings; names in the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="JOBQ_", extra="ignore", populate_by_name=True)

    # Connections (conventional names without the JOBQ_ prefix).
    database_url: str = Field("", validation_alias=AliasChoices("DATABASE_URL"))
    sqs_queue_url: str = Field("", validation_alias=AliasChoices("SQS_QUEUE_URL"))
    sqs_dlq_url: str = Field("", validation_alias=AliasChoices("SQS_DLQ_URL"))
    # Optional priority queues; without them every priority shares SQS_QUEUE_URL.
    sqs_high_queue_url: str = Field("", validation_alias=AliasChoices("SQS_HIGH_QUEUE_URL"))
    sqs_low_queue_url: str = Field("", validation_alias=AliasChoices("SQS_LOW_QUEUE_URL"))
    sqs_endpoint_url: str | None = Field(None, validation_alias=AliasChoices("SQS_ENDPOINT_URL"))
    aws_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )
    host: str = Field("127.0.0.1", validation_alias=AliasChoices("HOST"))
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"))
    # Where the client commands (jobq submit/status/list/stats) find the API.
    api_url: str = "http://127.0.0.1:8000"

    # Jobs.
    max_attempts: int = Field(3, ge=1, le=1000)
    max_payload_bytes: int = Field(256 * 1024, ge=1024)
    max_payload_depth: int = Field(32, ge=1, le=1000)
    task_modules: str = ""
    task_timeout_seconds: float = Field(15 * 60, gt=0)
    idempotency_ttl: int = Field(24 * 3600, ge=60)  # seconds a key keeps answering
    retention_days: float = Field(14, gt=0)
    batch_max_jobs: int = Field(500, ge=1, le=5000)
    # Weighted polling of the priority queues: high, default, low.
    priority_weights: str = "6,3,1"

    # Worker.
    worker_concurrency: int = Field(16, ge=1, le=256)
    # Receive loops per worker: one's ReceiveMessage is in flight while another's batch is
    # claimed; together they never hold more messages than free slots (slots are reserved).
    worker_pollers: int = Field(2, ge=1, le=16)
    # A busy worker waits up to this long to fill a batch of 10: free slots before a receive,
    # finished jobs before their delete. An idle worker (a lone job) never waits.
    batch_linger_ms: float = Field(20.0, ge=0, le=1000)
    sqs_wait_seconds: int = Field(MAX_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)
    visibility_timeout_seconds: int = Field(30, ge=5, le=MAX_VISIBILITY_TIMEOUT)
    heartbeat_seconds: float | None = Field(None, gt=0)
    backoff_base_seconds: float = Field(2.0, ge=0)
    backoff_cap_seconds: float = Field(300.0, ge=0, le=MAX_VISIBILITY_TIMEOUT)
    shutdown_grace_seconds: float = Field(25.0, ge=0, le=120)
    dlq_consumer: bool = True
    metrics_port: int = Field(9100, ge=0, le=65535)  # worker's /metrics; 0 turns it off

    # API ingest: threads that commit concurrent POST /jobs rows together (one INSERT and one
    # COMMIT for all rows waiting), and the publisher's SendMessageBatch threads and linger.
    submit_commit_threads: int = Field(2, ge=1, le=16)
    api_workers: int = Field(1, ge=1, le=64)  # `jobq api` processes (uvicorn --workers)
    publish_threads: int = Field(3, ge=1, le=16)
    publish_linger_ms: float = Field(5.0, ge=0, le=1000)

    # Dispatcher (re-publishes jobs whose fast-path publish was not confirmed).
    dispatcher: bool = True
    dispatch_after_seconds: float = Field(5.0, ge=0)
    dispatch_interval_seconds: float = Field(1.0, gt=0)
    max_delay_seconds: int = Field(MAX_DELAY_SECONDS, ge=0, le=MAX_DELAY_SECONDS)

    # Security.
    auth: str = "required"  # "disabled" turns API keys off (make dev does)
    api_keys: str = ""  # comma-separated [name:]read|submit:KEY
    api_key: str = ""  # the key the jobq client commands send
    keys_reload_seconds: float = Field(10.0, gt=0)
    submit_rate: float = Field(1000.0, ge=0)  # POSTs per second per key (or client); 0 = off
    submit_burst: int = Field(2000, ge=1)

    # Logging.
    log_level: str = "INFO"
    log_format: str = "json"

    @field_validator("auth")
    @classmethod
    def _known_auth(cls, value: str) -> str:
        if value not in ("required", "disabled"):
            raise ValueError("must be 'required' or 'disabled'")
        return value

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in ("json", "console"):
            raise ValueError("must be 'json' or 'console'")
        return value

    @property
    def effective_heartbeat_seconds(self) -> float:
        """Heartbeat often enough that two missed beats still leave the message invisible."""
        return self.heartbeat_seconds or max(1.0, self.visibility_timeout_seconds / 3)

    @property
    def queue_urls(self) -> dict[str, str]:
        """priority -> queue URL (falls back to the default queue)."""
        return {
            "high": self.sqs_high_queue_url or self.sqs_queue_url,
            "default": self.sqs_queue_url,
            "low": self.sqs_low_queue_url or self.sqs_queue_url,
        }

    @property
    def weights(self) -> tuple[int, int, int]:
        """Polling weights for high, default and low."""
        high, default, low = (int(p) for p in self.priority_weights.split(","))
        return high, default, low

    @field_validator("priority_weights")
    @classmethod
    def _three_weights(cls, value: str) -> str:
        try:
            parts = [int(p) for p in value.split(",")]
        except ValueError:
            parts = []
        if len(parts) != 3 or any(p < 0 for p in parts) or not any(parts):
            raise ValueError("must be three non-negative integers, e.g. 6,3,1")
        return value

    @property
    def task_module_list(self) -> list[str]:
        """Extra task modules to import, from a comma-separated list."""
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
