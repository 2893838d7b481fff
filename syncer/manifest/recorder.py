"""The Recorder: the one task that writes a run's outcomes to the manifest, in batches (group commit).

Workers ``put`` outcomes (fire and forget) or ``await put_and_wait`` when the row must be durable
before they go on (an upload's intent before its POST).  Before a batch commits, every folder that
files were renamed into since the last batch is fsynced once, so "done" is only ever recorded for a
durable file.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncer.manifest.store import Manifest, Update


class Recorder:
    """The one task that writes outcomes during a run, in batches.

    Workers call :meth:`put` (fire and forget) or ``await`` :meth:`put_and_wait` when they need the
    row durable before they go on (an upload's intent before its POST).
    """

    def __init__(self, manifest: Manifest, run_id: str, *, batch: int = 512, interval: float = 0.25):
        self.manifest = manifest
        self.run_id = run_id
        self.batch = batch
        self.interval = interval
        self._queue: asyncio.Queue[Update | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.written = 0

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run(), name="manifest-recorder")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def put(self, update: Update) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put_nowait(update)

    async def put_and_wait(self, update: Update) -> None:
        update.done = asyncio.get_running_loop().create_future()
        self.put(update)
        await update.done

    async def flush(self) -> None:
        """Wait until everything put so far is committed."""
        from syncer.manifest.store import Update

        marker = Update("pull_items", (), {})
        marker.table = ""  # a no-op marker, skipped by the writer
        await self.put_and_wait(marker)

    async def close(self) -> None:
        if self._task is None:
            return
        self._queue.put_nowait(None)
        await asyncio.shield(self._task)
        self._task = None
        if self.error is not None:
            raise self.error

    async def _run(self) -> None:
        # Group commit: take what is queued, write it in one transaction; what arrives meanwhile
        # forms the next batch.  A batch nobody waits on may linger up to ``interval`` to grow.
        stop = False
        while not stop:
            first = await self._queue.get()
            items: list[Update] = []
            if first is None:
                stop = True
            else:
                items.append(first)
            deadline = time.monotonic() + self.interval
            while not stop and len(items) < self.batch:
                if self._queue.empty():
                    if any(u.done is not None for u in items) or time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
                    continue
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                else:
                    items.append(nxt)
            if stop:
                while not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    if nxt is not None:
                        items.append(nxt)
            real = [u for u in items if u.table]
            try:
                dirs = {u.sync_dir for u in real if u.sync_dir}
                if dirs:
                    from syncer.local.storage import fsync_dirs

                    await asyncio.to_thread(fsync_dirs, sorted(dirs))
                if real:
                    await self.manifest.call(self.manifest.apply, real, self.run_id)
                    self.written += len(real)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter and to close()
                self.error = exc  # from now on put() raises it
                # Fail the waiters of this batch and of everything queued meanwhile: nothing will
                # write them now, and a waiter left pending would hang its worker (and the run).
                while not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    if nxt is not None:
                        items.append(nxt)
                for u in items:
                    if u.done is not None and not u.done.done():
                        u.done.set_exception(exc)
                return
            for u in items:
                if u.done is not None and not u.done.done():
                    u.done.set_result(None)
