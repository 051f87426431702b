"""SQS adapter: the only module that talks to boto3; it speaks job ids, not payloads."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.config import Settings
from app.errors import QueueUnavailable
from app.sqs.limits import MAX_BATCH, MAX_DELAY_SECONDS, MAX_VISIBILITY_TIMEOUT, MAX_WAIT_SECONDS

TRACE_ATTRIBUTE = "trace_id"
C = TypeVar("C")
R = TypeVar("R")


@contextmanager
def translate_sqs_errors(action: str) -> Iterator[None]:
    """Re-raise boto3/botocore failures as QueueUnavailable naming the action."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        raise QueueUnavailable(f"SQS {action} failed: {code}") from exc
    except BotoCoreError as exc:
        raise QueueUnavailable(f"SQS {action} failed: {exc}") from exc


def make_sqs_client(
    settings: Settings,
    *,
    read_timeout: float | None = None,
    connect_timeout: float | None = None,
    retries: int = 3,
) -> Any:
    """A boto3 SQS client; with an emulator endpoint and no credentials, dummy ones are used.

    Every call has a connect and a read timeout: by default the read timeout covers a long
    poll (the worker's); the API passes its shorter JOBQ_SQS_READ_TIMEOUT_SECONDS, and the
    readiness probe a short one and no retries (botocore's max_attempts counts retries).
    """
    kwargs: dict[str, Any] = {"region_name": settings.aws_region}
    if settings.sqs_endpoint_url:
        kwargs["endpoint_url"] = settings.sqs_endpoint_url
        if not os.environ.get("AWS_ACCESS_KEY_ID") and not os.environ.get("AWS_PROFILE"):
            kwargs.update(aws_access_key_id="test", aws_secret_access_key="test")
    kwargs["config"] = Config(
        connect_timeout=connect_timeout or settings.sqs_connect_timeout_seconds,
        # A long poll holds the connection open for up to WaitTimeSeconds.
        read_timeout=read_timeout or (MAX_WAIT_SECONDS + 10),
        retries={"mode": "standard", "max_attempts": retries},
        # Pollers (up to 16) and batch calls in flight (sqs_calls_in_flight) share the pool.
        max_pool_connections=64,
    )
    return boto3.client("sqs", **kwargs)


@dataclass(frozen=True)
class Message:
    """A received SQS message, decoded."""

    job_id: uuid.UUID | None
    receipt_handle: str
    message_id: str
    receive_count: int
    trace_id: str | None
    queue_url: str


# Every priority a job may have, highest first; each maps to a queue (SqsQueue.url_for).
PRIORITIES = ("high", "default", "low")


@dataclass(frozen=True)
class QueueCounts:
    """What GetQueueAttributes tells about one queue (approximate, as SQS says)."""

    messages: int  # visible + in flight + delayed
    created: float  # CreatedTimestamp, seconds since the epoch (0 when the server omits it)


@dataclass(frozen=True)
class Outgoing:
    """A job id to publish, with optional trace context and delay."""

    job_id: uuid.UUID
    trace_id: str | None = None
    delay_seconds: int = 0
    priority: str = "default"
    queue: str = "default"  # the named queue (routing); "default" is SQS_QUEUE_URL's


def encode_body(job_id: uuid.UUID) -> str:
    """The message body: only the job id, never the payload."""
    return json.dumps({"job_id": str(job_id)})


def decode_job_id(body: str) -> uuid.UUID | None:
    """The job id in a message body, or None for a message that is not ours."""
    try:
        return uuid.UUID(str(json.loads(body)["job_id"]))
    except (ValueError, KeyError, TypeError):
        return None


def _entry(out: Outgoing, index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": str(index), "MessageBody": encode_body(out.job_id)}
    if out.delay_seconds:
        entry["DelaySeconds"] = max(0, min(int(out.delay_seconds), MAX_DELAY_SECONDS))
    if out.trace_id:
        entry["MessageAttributes"] = {
            TRACE_ATTRIBUTE: {"DataType": "String", "StringValue": out.trace_id}
        }
    return entry


def send_calls(
    items: Sequence[Outgoing], url_for: Callable[[str, str], str]
) -> list[tuple[str, list[Outgoing]]]:
    """The SendMessageBatch calls that publish `items`: (queue URL, up to 10 items) each."""
    by_url: dict[str, list[Outgoing]] = {}
    for item in items:
        by_url.setdefault(url_for(item.priority, item.queue), []).append(item)
    return [
        (url, group[start : start + MAX_BATCH])
        for url, group in by_url.items()
        for start in range(0, len(group), MAX_BATCH)
    ]


class SqsQueue:
    """One SQS queue (and optionally its dead-letter queue) seen through jobq's needs."""

    def __init__(
        self,
        client: Any,
        queue_url: str,
        dlq_url: str = "",
        priority_urls: dict[str, str] | None = None,
        named_urls: dict[str, str] | None = None,
        calls_in_flight: int = 1,
    ) -> None:
        self.client = client
        # Batch operations on more than 10 messages send their calls this many at once.
        self.calls_in_flight = max(1, calls_in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.url = queue_url
        self.dlq_url = dlq_url
        self.priority_urls = {p: u for p, u in (priority_urls or {}).items() if u} or {
            "default": queue_url
        }
        # Named queues (routing): "media" -> URL, and optionally "media:high" -> URL.
        self.named_urls = dict(named_urls or {})

    def with_client(self, client: Any) -> SqsQueue:
        """The same queues through another client (e.g. one with shorter timeouts)."""
        clone = SqsQueue(
            client,
            self.url,
            self.dlq_url,
            self.priority_urls,
            self.named_urls,
            calls_in_flight=self.calls_in_flight,
        )
        return clone

    def _each(self, call: Callable[[C], R], chunks: Sequence[C]) -> list[R]:
        """call(chunk) for every chunk, up to calls_in_flight at once; results in order.

        Every call is waited for before the first error is raised, so none is still running
        when the caller handles the failure.
        """
        if len(chunks) <= 1 or self.calls_in_flight == 1:
            return [call(chunk) for chunk in chunks]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.calls_in_flight, thread_name_prefix="jobq-sqs")
        futures = [self._pool.submit(call, chunk) for chunk in chunks]
        wait(futures)
        return [f.result() for f in futures]

    def url_for(self, priority: str, queue: str = "default") -> str:
        """The SQS queue that carries jobs of `priority` on the named `queue`.

        A named queue without a URL of its own for `priority` uses its plain URL; a name with
        no URL at all (the API refuses those at submit) falls back to the default queue, so a
        job is never lost for want of a queue.
        """
        if queue != "default":
            url = self.named_urls.get(f"{queue}:{priority}") or self.named_urls.get(queue)
            if url:
                return url
        return self.priority_urls.get(priority) or self.url

    def distinct_urls(self, queues: Sequence[str] = ("default",)) -> list[str]:
        """Each SQS queue of the named `queues` once, in priority order (high, default, low)."""
        urls: list[str] = []
        for queue in queues:
            for priority in PRIORITIES:
                url = self.url_for(priority, queue)
                if url not in urls:
                    urls.append(url)
        return urls

    def send_call(self, url: str, chunk: Sequence[Outgoing]) -> list[uuid.UUID]:
        """One SendMessageBatch of up to 10 items to `url`; the ids SQS accepted."""
        entries = [_entry(out, i) for i, out in enumerate(chunk)]
        with translate_sqs_errors("SendMessageBatch"):
            resp = self.client.send_message_batch(QueueUrl=url, Entries=entries)
        return [chunk[int(ok["Id"])].job_id for ok in resp.get("Successful", [])]

    def send_batch(self, items: Sequence[Outgoing]) -> list[uuid.UUID]:
        """Publish with SendMessageBatch in chunks of 10 per queue; return the confirmed ids."""
        calls = send_calls(items, self.url_for)
        return [i for ids in self._each(lambda c: self.send_call(*c), calls) for i in ids]

    def receive(
        self, max_messages: int, wait_seconds: int, *, queue_url: str | None = None
    ) -> list[Message]:
        """Long-poll for up to `max_messages` (never more than 10)."""
        url = queue_url or self.url
        with translate_sqs_errors("ReceiveMessage"):
            resp = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(max_messages, MAX_BATCH)),
                WaitTimeSeconds=max(0, min(wait_seconds, MAX_WAIT_SECONDS)),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=[TRACE_ATTRIBUTE],
            )
        return [_decode(raw, url) for raw in resp.get("Messages", [])]

    def delete(self, message: Message) -> None:
        """Delete a handled message."""
        with translate_sqs_errors("DeleteMessage"):
            self.client.delete_message(
                QueueUrl=message.queue_url, ReceiptHandle=message.receipt_handle
            )

    def change_visibility(self, message: Message, seconds: float) -> None:
        """Hide the message for `seconds` more (0 makes it visible at once)."""
        with translate_sqs_errors("ChangeMessageVisibility"):
            self.client.change_message_visibility(
                QueueUrl=message.queue_url,
                ReceiptHandle=message.receipt_handle,
                VisibilityTimeout=clamp_visibility(seconds),
            )

    def change_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        """Extend or release several messages at once (heartbeats, shutdown)."""
        self.set_visibilities([(m, seconds) for m in messages])

    def set_visibilities(self, items: Sequence[tuple[Message, float]]) -> int:
        """Give each message its own visibility timeout, 10 per call; return how many failed."""

        def call(job: tuple[str, list[tuple[Message, float]]]) -> int:
            url, chunk = job
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": m.receipt_handle,
                    "VisibilityTimeout": clamp_visibility(seconds),
                }
                for i, (m, seconds) in enumerate(chunk)
            ]
            with translate_sqs_errors("ChangeMessageVisibilityBatch"):
                reply = self.client.change_message_visibility_batch(QueueUrl=url, Entries=entries)
            return len(reply.get("Failed", []))

        return sum(self._each(call, list(_chunks_by_queue(items, lambda item: item[0]))))

    def delete_batch(self, messages: Sequence[Message]) -> int:
        """Delete handled messages, 10 per call; return how many SQS refused (they reappear)."""

        def call(job: tuple[str, list[Message]]) -> int:
            url, chunk = job
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)
            ]
            with translate_sqs_errors("DeleteMessageBatch"):
                reply = self.client.delete_message_batch(QueueUrl=url, Entries=entries)
            return len(reply.get("Failed", []))

        return sum(self._each(call, list(_chunks_by_queue(messages, lambda m: m))))

    def attributes(self, queue_url: str | None = None) -> dict[str, str]:
        """All attributes of the queue (depths, redrive policy, ...)."""
        with translate_sqs_errors("GetQueueAttributes"):
            resp = self.client.get_queue_attributes(
                QueueUrl=queue_url or self.url, AttributeNames=["All"]
            )
        return dict(resp.get("Attributes", {}))

    def counts(self, queue_url: str) -> QueueCounts:
        """How many messages the queue holds in any state, and when it was created."""
        with translate_sqs_errors("GetQueueAttributes"):
            resp = self.client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=COUNTED)
        attrs = resp.get("Attributes", {})
        held = sum(int(attrs.get(name, 0)) for name in COUNTED[:3])
        return QueueCounts(held, float(attrs.get("CreatedTimestamp", 0)))

    def queue_names(self) -> list[str]:
        """ "default" and every named queue this process knows (JOBQ_QUEUE_URLS)."""
        names = ["default"]
        for key in self.named_urls:
            name = key.split(":", 1)[0]
            if name not in names:
                names.append(name)
        return names

    def routes_of(self, queue_url: str) -> list[tuple[str, str]]:
        """The (named queue, priority) pairs whose jobs go to `queue_url`."""
        names = self.queue_names()
        return [(q, p) for q in names for p in PRIORITIES if self.url_for(p, q) == queue_url]

    def redrive_policy(self, queue_url: str | None = None) -> dict[str, Any] | None:
        """The queue's RedrivePolicy (main queue by default), or None when it has none."""
        raw = self.attributes(queue_url).get("RedrivePolicy")
        return json.loads(raw) if raw else None

    def resolve_dlq_url(self) -> str:
        """The dead-letter queue's URL: configured, or found through the RedrivePolicy."""
        if self.dlq_url:
            return self.dlq_url
        policy = self.redrive_policy()
        if not policy:
            return ""
        arn = str(policy["deadLetterTargetArn"])
        _, _, _, _, account, name = arn.split(":", 5)
        with translate_sqs_errors("GetQueueUrl"):
            resp = self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        self.dlq_url = str(resp["QueueUrl"])
        return self.dlq_url

    def ping(self) -> None:
        """Raise QueueUnavailable unless the queue answers."""
        with translate_sqs_errors("GetQueueAttributes"):
            self.client.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
            )


T = TypeVar("T")


COUNTED = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
]


def _chunks_by_queue(
    items: Sequence[T], message_of: Callable[[T], Message]
) -> Iterator[tuple[str, list[T]]]:
    """Items grouped by their message's queue URL, at most one SQS batch per chunk."""
    by_queue: dict[str, list[T]] = {}
    for item in items:
        by_queue.setdefault(message_of(item).queue_url, []).append(item)
    for url, group in by_queue.items():
        for start in range(0, len(group), MAX_BATCH):
            yield url, group[start : start + MAX_BATCH]


def clamp_visibility(seconds: float) -> int:
    """A visibility timeout SQS accepts: whole seconds in 0..12 h."""
    return max(0, min(int(round(seconds)), MAX_VISIBILITY_TIMEOUT))


def _decode(raw: dict[str, Any], queue_url: str) -> Message:
    attrs = raw.get("Attributes", {})
    trace = raw.get("MessageAttributes", {}).get(TRACE_ATTRIBUTE, {}).get("StringValue")
    return Message(
        job_id=decode_job_id(raw.get("Body", "")),
        receipt_handle=raw["ReceiptHandle"],
        message_id=raw.get("MessageId", ""),
        receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
        trace_id=trace,
        queue_url=queue_url,
    )


def ensure_queues(
    client: Any,
    name: str,
    dlq_name: str,
    *,
    max_receive_count: int,
    visibility_timeout: int = 30,
) -> tuple[str, str]:
    """Create (idempotently) queue `name` and its DLQ with a RedrivePolicy; return both URLs."""
    with translate_sqs_errors("CreateQueue"):
        dlq_url = client.create_queue(
            QueueName=dlq_name, Attributes={"MessageRetentionPeriod": str(14 * 86400)}
        )["QueueUrl"]
        dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
        )
        url = client.create_queue(
            QueueName=name,
            Attributes={"VisibilityTimeout": str(visibility_timeout), "RedrivePolicy": policy},
        )["QueueUrl"]
        # create_queue on an existing queue keeps old attributes on some servers: set them.
        client.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    return url, dlq_url
