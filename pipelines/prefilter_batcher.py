"""Dynamic batching for the prefilter: frames of one product, from any number of micro-batches, share a call.

A driver's micro-batches hold frames of several products, so split per product they make small
calls (about 3 frames for 3 products in a batch of 8); many small calls then queue at the prefilter
actor and a frame waits for the calls ahead of it. The batcher instead keeps a queue per product
and sends a call when the queue holds ``batch_size`` frames or its oldest frame has waited
``max_wait_s``, with at most ``max_calls`` calls in flight (one running and one on its way per
actor keeps every actor busy): under load frames wait here, where they join fuller batches, not in
an actor's mailbox. The same idea as Triton's and Ray Serve's dynamic batching, per product.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

Item = TypeVar("Item")

#: ``call(product, items)`` -> one result per item, in order
BatchCall = Callable[[str, list], Awaitable[list]]


class ProductBatcher(Generic[Item]):
    """Groups items by product into calls of at most ``batch_size``; :meth:`submit` returns their results."""

    def __init__(self, call: BatchCall, batch_size: int, max_wait_s: float, max_calls: int):
        if batch_size < 1 or max_calls < 1 or max_wait_s < 0:
            raise ValueError("batch_size and max_calls must be >= 1 and max_wait_s >= 0")
        self.call = call
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.max_calls = max_calls
        self._queues: dict[str, deque[tuple[Item, asyncio.Future, float]]] = {}
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task] = set()
        self.calls_sent = 0
        self.items_sent = 0

    async def submit(self, product: str, items: list[Item]) -> list:
        """The call results for ``items`` (all of one product), in order; a failed call raises here."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in items]
        self._queues.setdefault(product, deque()).extend((item, f, now) for item, f in zip(items, futures))
        self._dispatch()
        return list(await asyncio.gather(*futures))

    def _ready(self, now: float) -> str | None:
        """The product to send next: a full queue, else the one whose oldest item has waited longest (if long
        enough); None when nothing is due yet."""
        due, oldest = None, None
        for product, queue in self._queues.items():
            if not queue:
                continue
            if len(queue) >= self.batch_size:
                return product
            waited_since = queue[0][2]
            if now - waited_since >= self.max_wait_s and (oldest is None or waited_since < oldest):
                due, oldest = product, waited_since
        return due

    def _dispatch(self) -> None:
        """Send every call that is due while a slot is free; otherwise wake up when the oldest item is due."""
        now = time.monotonic()
        while self._in_flight < self.max_calls and (product := self._ready(now)) is not None:
            queue = self._queues[product]
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(product, batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight < self.max_calls:
            waiting = [queue[0][2] for queue in self._queues.values() if queue]
            if waiting:
                self._timer = asyncio.get_running_loop().call_later(
                    max(min(waiting) + self.max_wait_s - now, 0.0), self._dispatch)

    async def _send(self, product: str, batch: list[tuple[Item, asyncio.Future, float]]) -> None:
        self.calls_sent += 1
        self.items_sent += len(batch)
        try:
            results = await self.call(product, [item for item, _, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"prefilter returned {len(results)} results for {len(batch)} frames")
        except asyncio.CancelledError:
            for _, future, _ in batch:
                future.cancel()
            raise
        except Exception as exc:  # the frames' owners decide (retry, dead-letter): never lose a future
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._dispatch()
