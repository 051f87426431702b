"""Configuration: every setting comes from an environment variable (twelve-factor)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.sqs.limits import MAX_VISIBILITY_TIMEOUT, MAX_WAIT_SECONDS
from app.tasks.retry import MAX_RETRY_DELAY_SECONDS, Exponential

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Networks from a comma-separated CIDR list (`127.0.0.0/8,10.0.0.0/8`); ValueError if bad."""
    parts = (p.strip() for p in text.split(","))
    return tuple(ipaddress.ip_network(p, strict=False) for p in parts if p)


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
    # Attempts (runs that may fail) per job, unless the task or the job says otherwise; a
    # job's own max_attempts may not exceed the ceiling. Independent of the queue's
    # maxReceiveCount, which only guards against jobs that crash their worker.
    max_attempts: int = Field(10, ge=1, le=1000)
    max_attempts_ceiling: int = Field(100, ge=1, le=1000)
    # A job that took its worker down this many times (killed, OOM, hung past its lease) fails.
    max_crashes: int = Field(3, ge=1, le=100)
    # Times the DLQ consumer sends a job that never ran back to its queue before failing it.
    max_redeliveries: int = Field(10, ge=0, le=1000)
    # A job whose previous run was lost with its worker runs next alone in a child process, so
    # a job that kills its process is told apart from the jobs that merely shared it.
    isolate_crashed: bool = True
    max_result_bytes: int = Field(1024 * 1024, ge=1024)  # a larger handler result fails
    max_traceback_bytes: int = Field(16 * 1024, ge=256)  # stored per failed attempt
    max_payload_bytes: int = Field(256 * 1024, ge=1024)
    max_payload_depth: int = Field(32, ge=1, le=1000)
    task_modules: str = ""  # imported by workers only: the API reads the task catalogue
    # Task catalogue: a definition counts as live (a worker runs it) this long after its worker
    # last published it; workers re-publish every quarter of it. Submitting processes reload
    # the catalogue this often.
    catalogue_live_seconds: float = Field(120.0, ge=5)
    catalogue_refresh_seconds: float = Field(5.0, gt=0)
    worker_version: str = ""  # shown in GET /tasks (default: the installed jobq's version)
    task_timeout_seconds: float = Field(15 * 60, gt=0)
    idempotency_ttl: int = Field(24 * 3600, ge=60)  # seconds a key keeps answering
    retention_days: float = Field(14, gt=0)
    batch_max_jobs: int = Field(500, ge=1, le=5000)
    # Weighted polling of the priority queues: high, default, low.
    priority_weights: str = "6,3,1"
    # Named queues (docs/flow-control.md): name=URL pairs, comma-separated, with name:high /
    # name:low for a named queue's priority queues ("default" is SQS_QUEUE_URL's own).
    queue_urls_map: str = Field("", validation_alias=AliasChoices("JOBQ_QUEUE_URLS"))
    # The named queues a worker serves.
    queues: str = "default"
    # Flow control: how long a worker trusts "nothing is paused or limited" before looking
    # again (a new pause or limit takes effect within this), and how long a paused job's
    # message waits before it is looked at again (a resume takes effect within this).
    flow_refresh_seconds: float = Field(1.0, gt=0, le=60)
    pause_recheck_seconds: float = Field(5.0, ge=1, le=900)
    # How often a worker writes its running jobs' latest ctx.progress() (one statement).
    progress_interval_seconds: float = Field(1.0, gt=0, le=60)

    # Worker.
    worker_concurrency: int = Field(16, ge=1, le=256)
    # Receive loops per worker: one's ReceiveMessage is in flight while another's batch is
    # claimed; together they never hold more messages than free slots (slots are reserved).
    # 0: one per 10 slots (2-8), so receives of 10 per RTT keep the slots busy even when SQS
    # is 20 ms away (docs/benchmarks.md); each poller holds a PostgreSQL connection.
    worker_pollers: int = Field(0, ge=0, le=16)
    # A busy worker waits up to this long to fill a batch of 10: free slots before a receive,
    # finished jobs before their delete. An idle worker (a lone job) never waits.
    batch_linger_ms: float = Field(20.0, ge=0, le=1000)
    sqs_wait_seconds: int = Field(MAX_WAIT_SECONDS, ge=0, le=MAX_WAIT_SECONDS)
    visibility_timeout_seconds: int = Field(30, ge=5, le=MAX_VISIBILITY_TIMEOUT)
    heartbeat_seconds: float | None = Field(None, gt=0)
    # How often a worker refreshes its row in the workers table (the dashboard's workers view).
    worker_presence_seconds: float = Field(10.0, gt=0)
    # The default retry schedule (a task may declare its own): base·2^(n-1) before the nth
    # retry, capped, ±jitter. 10 attempts wait 1.1-1.9 h in all: they ride out an hour's outage.
    backoff_base_seconds: float = Field(15.0, ge=0)
    backoff_cap_seconds: float = Field(1800.0, ge=0, le=MAX_RETRY_DELAY_SECONDS)
    backoff_jitter: float = Field(0.25, ge=0, le=1)
    # A worker gives up a job it could not renew the lease of this long before the lease ends,
    # and a new claim waits this long past the end: the two never overlap.
    lease_margin_seconds: float = Field(5.0, ge=0, le=600)
    shutdown_grace_seconds: float = Field(25.0, ge=0, le=120)
    dlq_consumer: bool = True
    metrics_port: int = Field(9100, ge=0, le=65535)  # worker's /metrics; 0 turns it off
    # CloudWatch: job metrics as Embedded Metric Format lines on stdout every N s (0: off).
    emf_interval_seconds: float = Field(0.0, ge=0)
    emf_namespace: str = "jobq"
    emf_environment: str = "jobq"  # the Environment dimension (the stack's EnvironmentName)

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
    # How often the schedule ticker (it runs with the dispatcher) looks for due cron ticks.
    schedule_interval_seconds: float = Field(5.0, gt=0)
    # Reconciler (re-sends queued/retrying jobs whose SQS message vanished: a purge, retention
    # expiry, an emulator restarted). A job is due for it once visibility + margin passed since
    # it should have been delivered; 0 s interval turns it off.
    reconcile_interval_seconds: float = Field(15.0, ge=0)
    reconcile_margin_seconds: float = Field(60.0, ge=0)
    reconcile_batch_size: int = Field(500, ge=1, le=10_000)

    # Security.
    auth: str = "required"  # "disabled" turns API keys off (make dev does)
    api_keys: str = ""  # comma-separated [name:]read|submit:KEY
    api_key: str = ""  # the key the jobq client commands send
    keys_reload_seconds: float = Field(10.0, gt=0)
    submit_rate: float = Field(1000.0, ge=0)  # POSTs per second per key (or client); 0 = off
    submit_burst: int = Field(2000, ge=1)
    # Networks the `http` task may reach although they are not public (loopback, private,
    # link-local...): comma-separated CIDRs, e.g. 10.0.0.0/8,127.0.0.1/32. Empty: public only.
    http_allowed_networks: str = ""
    # HMAC-SHA256 key that signs completion callbacks (Jobq-Signature); without it a job's
    # callback_url is refused at submit and callbacks are not sent.
    callback_secret: str = ""

    # Timeouts of every call to a dependency (docs/operations-limits.md).
    sqs_connect_timeout_seconds: float = Field(3.0, gt=0, le=60)
    # Batch calls one send/delete/visibility change of many messages makes at once (10 per
    # call): the completer's 100 deletes take one SQS round trip instead of ten.
    sqs_calls_in_flight: int = Field(10, ge=1, le=32)
    # The API's SQS calls (sends); the worker's long polls wait for sqs_wait_seconds more.
    sqs_read_timeout_seconds: float = Field(10.0, gt=0, le=120)
    db_connect_timeout_seconds: int = Field(5, ge=1, le=60)
    # Longest SQL statement an API session may run (0: no limit); workers are not limited.
    api_statement_timeout_ms: int = Field(15_000, ge=0)
    # Readiness and queue depths come from a background probe of PostgreSQL and SQS, never
    # from a request: how often it runs, and how long each of its calls may take.
    probe_interval_seconds: float = Field(5.0, gt=0, le=300)
    probe_timeout_seconds: float = Field(3.0, gt=0, le=60)

    # Sizes of what the API returns: a job's result (GET /jobs/{id}; max_result_bytes above is
    # what a worker stores at most), and any one of payload, result and error in a list
    # (GET /jobs, the dashboard, /stats), beyond which it is replaced by a marker
    # (docs/operations-limits.md).
    list_field_max_bytes: int = Field(4096, ge=64)

    # HTTP server (`jobq api`): whom to believe about the client's address (comma-separated
    # IPs or networks of the load balancers; empty: nobody, X-Forwarded-For is ignored),
    # and the limits that keep slow or idle clients from exhausting the process.
    forwarded_allow_ips: str = ""
    api_max_connections: int = Field(4096, ge=1)
    api_header_timeout_seconds: float = Field(10.0, gt=0)
    api_body_timeout_seconds: float = Field(60.0, gt=0)
    # Longer than the ALB's idle timeout (60 s) so the ALB, not the API, closes idle
    # connections (otherwise a request can race the close and get a 502).
    api_keep_alive_seconds: float = Field(65.0, gt=0)
    api_backlog: int = Field(2048, ge=1)

    # Logging.
    log_level: str = "INFO"
    log_format: str = "json"

    @field_validator("auth")
    @classmethod
    def _known_auth(cls, value: str) -> str:
        if value not in ("required", "disabled"):
            raise ValueError("must be 'required' or 'disabled'")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _no_wildcard_proxy(cls, value: str) -> str:
        # uvicorn's "*" takes the left-most X-Forwarded-For entry: the one the client wrote.
        if "*" in value:
            raise ValueError(
                "must list the load balancers' addresses or networks (e.g. the VPC's CIDR), "
                "not '*': with '*' the client chooses its own address"
            )
        return value

    @field_validator("log_format")
    @classmethod
    def _known_log_format(cls, value: str) -> str:
        if value not in ("json", "console"):
            raise ValueError("must be 'json' or 'console'")
        return value

    @property
    def default_backoff(self) -> Exponential:
        """The retry schedule of tasks that declare none."""
        return Exponential(self.backoff_base_seconds, self.backoff_cap_seconds, self.backoff_jitter)

    @property
    def effective_lease_margin(self) -> float:
        """The lease margin, at most a quarter of the lease (so renewals still fit in it)."""
        return min(self.lease_margin_seconds, self.visibility_timeout_seconds / 4)

    @property
    def reconcile_after_seconds(self) -> float:
        """How long past its due time a job waits for a delivery before it is re-sent."""
        return self.visibility_timeout_seconds + self.reconcile_margin_seconds

    @property
    def effective_pollers(self) -> int:
        """Receive loops: as set, or (0) one per 10 slots, at least 2 and at most 8."""
        return self.worker_pollers or min(8, max(2, self.worker_concurrency // 10))

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
    def named_queue_urls(self) -> dict[str, str]:
        """JOBQ_QUEUE_URLS parsed: "media" -> URL, "media:high" -> URL."""
        pairs = (p.strip() for p in self.queue_urls_map.split(","))
        return dict(p.split("=", 1) for p in pairs if p)  # type: ignore[misc]

    @property
    def queue_names(self) -> list[str]:
        """Every named queue jobs may be routed to ("default" and JOBQ_QUEUE_URLS' names)."""
        names = ["default", *(k.split(":", 1)[0] for k in self.named_queue_urls)]
        return list(dict.fromkeys(names))

    @property
    def served_queues(self) -> list[str]:
        """JOBQ_QUEUES: the named queues this worker polls."""
        return [q.strip() for q in self.queues.split(",") if q.strip()] or ["default"]

    @field_validator("queue_urls_map")
    @classmethod
    def _queue_map(cls, value: str) -> str:
        for part in (p.strip() for p in value.split(",")):
            name, sep, url = part.partition("=")
            queue, _, priority = name.partition(":")
            if part and (
                not sep or not url or not queue or priority not in ("", "high", "default", "low")
            ):
                raise ValueError(
                    f"{part!r} must be name=URL or name:high|default|low=URL, comma-separated"
                )
        return value

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

    @field_validator("http_allowed_networks")
    @classmethod
    def _cidr_list(cls, value: str) -> str:
        try:
            parse_networks(value)
        except ValueError as exc:
            raise ValueError(f"must be comma-separated CIDR networks: {exc}") from exc
        return value

    @property
    def http_allowed_network_list(self) -> tuple[IPNetwork, ...]:
        """The parsed JOBQ_HTTP_ALLOWED_NETWORKS."""
        return parse_networks(self.http_allowed_networks)

    @property
    def task_module_list(self) -> list[str]:
        """Extra task modules to import, from a comma-separated list."""
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
