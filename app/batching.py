"""Natural batching: block for one item, then take whatever else is already waiting."""

from __future__ import annotations

import queue
from typing import TypeVar

T = TypeVar("T")


def take_batch(source: queue.SimpleQueue[T | None], limit: int) -> tuple[list[T], bool]:
    """Wait for an item, then drain up to `limit` without waiting; (batch, stop).

    `None` in the queue is a stop sentinel: `stop` is True once one was taken. Under load the
    batch is everything that arrived during the previous batch's write; alone, it is one item.
    """
    first = source.get()
    if first is None:
        return [], True
    batch = [first]
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
    return batch, False
