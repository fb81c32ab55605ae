"""The generation queue: one generation at a time in a worker thread, first in first out, at most `capacity` admitted.

MONAI Label runs /infer inside its event loop, so one generation holds every other request. Here a
generation runs in the queue's worker thread while the event loop goes on answering (`GET /info/`
among them); a request beyond the capacity is refused with 429 and a `Retry-After` estimate.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The queue holds `capacity` requests; `retry_after_s` estimates when one will have left."""

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        super().__init__(f"queue: all {capacity} places are taken (one generation runs, the others wait); retry later")
        self.retry_after_s = retry_after_s


class GenerationQueue:
    """Admits at most `capacity` requests (validating, waiting or generating) and runs their generations in order."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.last_seconds = 1.0  # the latest generation's duration, for Retry-After
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")

    @contextmanager
    def place(self) -> Iterator[None]:
        """Hold a place for one request (used in the event loop only), or raise QueueFull."""
        if self.length >= self.capacity:
            raise QueueFull(self.capacity, max(1, math.ceil(self.last_seconds * self.length)))
        self.length += 1
        try:
            yield
        finally:
            self.length -= 1

    def timed(self, work: Callable[[], T]) -> T:
        """Run `work` in the worker thread, recording how long it took."""
        started = time.monotonic()
        try:
            return work()
        finally:
            self.last_seconds = time.monotonic() - started

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in the worker thread after the generations submitted before it."""
        return await asyncio.wrap_future(self.executor.submit(self.timed, work))

    def status(self) -> dict[str, int]:
        """What /info/ shows: requests admitted now (the running one included) and the most admitted at once."""
        return {"length": self.length, "capacity": self.capacity}
