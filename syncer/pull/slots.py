"""Transfer slots: the pull's ``concurrency`` connections, shared by whole downloads and big files'
Range segments (:mod:`syncer.pull.segments`).

Every download holds a slot while its answer is open (``HeldDownload``).  A big file takes its first
slot like any file (``take``, waiting in line) and more only with ``try_take``, which succeeds only when a
slot is free and nobody waits for one: a big file never starves the small ones.
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType
from typing import Any


class TransferSlots:
    """``n`` transfer connections shared by whole downloads (``HeldDownload``) and segments (``try_take``).

    Released slots go to waiters first, in order; ``try_take`` succeeds only when a slot is free and
    nobody waits, so extra segments never take a connection a waiting download wants."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def take(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed over just as we were cancelled: pass it on
            elif fut in self._waiters:  # (give() drops a cancelled waiter itself)
                self._waiters.remove(fut)
            raise  # the CancelledError, always: a pool worker that swallowed it would wait forever

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class HeldDownload:
    """``async with slots-held download``: a slot for as long as the answer is open."""

    __slots__ = ("_slots", "_ctx", "_took")

    def __init__(self, slots: TransferSlots, ctx: Any) -> None:
        self._slots, self._ctx, self._took = slots, ctx, False

    async def __aenter__(self) -> Any:
        await self._slots.take()
        self._took = True
        try:
            return await self._ctx.__aenter__()
        except BaseException:
            self._took = False
            self._slots.give()
            raise

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._ctx.__aexit__(et, exc, tb)
        finally:
            if self._took:
                self._took = False
                self._slots.give()
