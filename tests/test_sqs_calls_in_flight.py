"""Batch SQS operations on more than 10 messages keep several calls in flight (issue 19)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from app.config import Settings
from app.errors import QueueUnavailable
from app.sqs.queue import Message, Outgoing, SqsQueue

URL = "https://sqs.example/123/q"


class SlowClient:
    """A boto3 stand-in whose batch calls wait until `expect` of them are in flight at once."""

    def __init__(self, expect: int, fail_call: int | None = None) -> None:
        self.barrier = threading.Barrier(expect, timeout=5)
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.fail_call = fail_call

    def _call(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            self.calls.append([e["Id"] for e in entries])
            index = len(self.calls)
        self.barrier.wait()  # raises BrokenBarrierError if the calls were made one at a time
        if index == self.fail_call:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url=URL)
        return {"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []}

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:  # noqa: N803
        return self._call(Entries)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:  # noqa: N803
        return self._call(Entries)

    def change_message_visibility_batch(
        self,
        QueueUrl: str,  # noqa: N803
        Entries: list[dict[str, Any]],  # noqa: N803
    ) -> Any:
        return self._call(Entries)


def messages(n: int) -> list[Message]:
    return [Message(uuid.uuid4(), f"rh-{i}", f"m-{i}", 1, None, URL) for i in range(n)]


def test_deletes_of_a_completion_batch_are_sent_at_once() -> None:
    client = SlowClient(expect=3)
    sqs = SqsQueue(client, URL, calls_in_flight=4)
    assert sqs.delete_batch(messages(25)) == 0
    assert sorted(len(c) for c in client.calls) == [5, 10, 10]


def test_sends_and_visibility_changes_are_sent_at_once_and_all_confirmed() -> None:
    client = SlowClient(expect=2)
    sqs = SqsQueue(client, URL, calls_in_flight=2)
    items = [Outgoing(uuid.uuid4(), "") for _ in range(20)]
    assert sqs.send_batch(items) == [o.job_id for o in items]
    client.barrier.reset()
    sqs.change_visibility_batch(messages(20), 30)
    assert len(client.calls) == 4


def test_one_failed_call_fails_the_batch_after_every_call_returned() -> None:
    client = SlowClient(expect=3, fail_call=2)
    sqs = SqsQueue(client, URL, calls_in_flight=3)
    with pytest.raises(QueueUnavailable, match="DeleteMessageBatch"):
        sqs.delete_batch(messages(30))
    assert len(client.calls) == 3


def test_pollers_default_to_one_per_ten_slots_within_2_to_8() -> None:
    assert [Settings(worker_concurrency=c).effective_pollers for c in (1, 16, 64, 256)] == [
        2,
        2,
        6,
        8,
    ]
    assert Settings(worker_concurrency=256, worker_pollers=3).effective_pollers == 3
