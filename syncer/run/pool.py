"""The one worker pool every job uses: a producer fills a bounded queue, N workers drain it.

The queue is bounded, so memory stays flat however many items there are.  Every worker reports an
error it cannot handle through ``ctx.fatal`` (the run stops starting new work) and keeps draining, so a
producer never waits forever on a full queue.  Cancelled (a second signal, or the grace period ran
out): in-flight work is abandoned; items not recorded as done stay pending in the manifest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from syncer.run.runner import RunContext

T = TypeVar("T")


class WorkerPool(Generic[T]):
    def __init__(self, ctx: RunContext, handle: Callable[[T], Awaitable[None]], *, workers: int,
                 queue_size: int, name: str):
        self.ctx = ctx
        self._handle = handle
        self._workers = workers
        self._name = name
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=queue_size)

    async def put(self, item: T) -> None:
        await self._queue.put(item)

    async def run(self, produce: Callable[[], Awaitable[None]]) -> None:
        """Run the producer, then let each worker drain the queue and stop."""
        tasks = [asyncio.create_task(self._work(), name=f"{self._name}-{i}") for i in range(self._workers)]
        try:
            await produce()
            for _ in tasks:
                await self._queue.put(None)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        for r in results:
            if isinstance(r, BaseException):
                self.ctx.fatal(r)

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if self.ctx.stopping:
                continue  # drain: the manifest keeps the item as it is for the next run
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. the recorder could not write: stop, keep draining
                self.ctx.fatal(exc)
