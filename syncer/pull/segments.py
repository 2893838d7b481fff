"""Big files in parallel Range segments, written at their offsets into the one hidden temp file.

A file of at least ``pull.segment_threshold`` bytes is fetched by up to ``pull.segments`` connections at
once, in pieces: each a ``Range: bytes=a-b`` request answered by a 206 whose ``Content-Range`` must be
exactly ``bytes a-b/size``.  Pieces are cut from the front of what is left, 1/(2N) of it each, down to
32 MiB (or 1/32 of the file) near the end: the file's prefix completes as it goes, so the checksum keeps up
with the network and little is left to hash at the end (16 MiB tail pieces cost 1 GiB at 20 ms and 40 MB/s
a connection 80 ms more: 40 requests instead of ~30, each waiting its round trip).  A connection that
finds nothing left takes the second half of the busy piece with the most left (that piece's connection
stops at the new end and is closed), so they all finish together.  What the rules are:

- **Connections.**  Every transfer of the pull, whole file or piece, holds one of ``concurrency`` slots
  (:class:`TransferSlots`) while its connection is open.  A big file gets its first slot like any file;
  it takes more only when one is free and no other download is waiting for it, so a big file never
  starves the small ones (it runs on one connection while the pool is busy, and widens when it is not).
- **The probe.**  The first piece's answer decides: a 206 that matches, and the other connections start;
  a 200 (the server ignores Range) or a 206 that does not match means one whole stream (the pull's
  ordinary path), for this file and every later one of the run; nothing of the answer is kept.
- **Retries.**  Each piece has its own (``RetryPolicy.retrying``) and goes on from its last byte
  written.  An expired link (403) is refreshed once for all pieces (one shared fresh-link task), at
  most ``LINK_REFRESHES`` times for the file.
- **Crash rules** as for a whole download: the final path only ever holds a complete file (fsync, then
  rename, then the recorder fsyncs the folder before it records the file done).  Progress is recorded
  in ``.<name>.syncer-part.segs`` (0600) beside the temp, written only after an fsync of the temp, so
  it never claims bytes that are not durable; a killed run resumes each unfinished piece.  The record
  names the temp it describes (device, inode) and its size; one that does not match starts the file
  over.  A whole download that finds such a record starts over too (the temp has holes, no prefix).
- **The witness.**  The manifest's sha256 is of the whole file, in order: after each write the
  contiguous prefix is hashed as it grows (the batch just written from memory when it continues the
  prefix, other bytes read back from the page cache).  ``SYNCER_SEGMENT_HASH=end`` reads it all back
  at the end instead (measured slower: README, "Big files").

Not used for an encrypted or object-store destination (one stream each): the job decides (``wants``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.api.results import RangeNotServed
from syncer.errors import LinkExpiredError, ProtocolError, TransientError, is_retryable
from syncer.local.partial import unlink_quietly
from syncer.local.storage import _disk_error, _write_all
from syncer.local.writer import AtomicWriter
from syncer.pull.link import SharedLink
from syncer.pull.pieces import InOrderHash, Piece, pieces_from, read_record, record_body
from syncer.pull.slots import HeldDownload, TransferSlots

if TYPE_CHECKING:
    from syncer.pull.plan import WorkItem
    from syncer.run.runner import RunContext

log = logging.getLogger("syncer.pull")

BATCH_BYTES = 512 * 1024        # a piece's bytes go to disk in batches of this size (one thread hop each)
MIN_PIECE = 256 * 1024
STEAL_MIN = 4 << 20              # a busy piece is split for an idle connection when each half keeps this much
TAIL_PIECE = 32 << 20            # pieces shrink as the file nears its end, down to this (or 1/32 of the file)
CHECKPOINT_BYTES = 32 << 20      # a segment record at least every 1/16 of the file (1 to 32 MiB) written...
CHECKPOINT_SECONDS = 1.0         # ...or every second, whichever comes first
HASH_MODE_ENV = "SYNCER_SEGMENT_HASH"  # "inorder" (default) or "end": for measuring, see the docstring


class Segmenter:
    """The run's segmented downloads: the slots, the settings, and what was learnt about Range."""

    def __init__(self, ctx: RunContext, *, concurrency: int, threshold: int, segments: int) -> None:
        self.ctx = ctx
        self.slots = TransferSlots(concurrency)
        self.threshold = threshold
        self.segments = max(1, min(segments, concurrency))
        self.ranges_ok = True  # cleared when the server answered a piece without the 206 asked for
        self.hash_in_order = os.environ.get(HASH_MODE_ENV, "inorder").strip().lower() != "end"
        # Files entered more than once this run (the job's own retry of the whole transfer): their pieces
        # then get one try each per entry, so the two retry loops do not multiply.
        self.entered: set[str] = set()

    def download(self, url: str, *, offset: int = 0) -> HeldDownload:
        """``client.download`` holding a transfer slot: what the whole-file path uses."""
        return HeldDownload(self.slots, self.ctx.client.download(url, offset=offset))

    def wants(self, item: WorkItem, writer: object) -> bool:
        """A big file whose sink writes a plain file (``AtomicWriter`` itself: an encrypting or an
        object-store writer takes one stream), while the server has served ranges as asked."""
        return (self.segments > 1 and self.ranges_ok and type(writer) is AtomicWriter
                and writer.encryptor is None and item.size is not None
                and item.size >= max(self.threshold, 2 * MIN_PIECE))

    async def transfer(self, item: WorkItem, writer: AtomicWriter) -> tuple[int, str, Path] | None:
        """Fetch ``item`` in segments to ``writer``'s final path (``writer`` itself stays unopened, for a
        whole download after all): (bytes, sha256, folder), or None when the server does not serve
        ranges as asked (nothing kept: fetch it whole)."""
        return await _SegmentedFile(self, item, writer.final_path, writer.root).run()


class _SegmentedFile:
    def __init__(self, seg: Segmenter, item: WorkItem, final: Path, root: Path) -> None:
        self.seg, self.item, self.ctx = seg, item, seg.ctx
        self.size: int = item.size  # type: ignore[assignment]  # wants() saw a size
        self.writer = AtomicWriter(final, root=root, expected_size=self.size, sync_dir=False)
        self.pieces: list[Piece] = []
        self.link = SharedLink(seg.ctx.client, item.file_id, item.fullpath)
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: BaseException | None = None
        self.verified = False
        self.unsaved = 0
        self.saved_at = time.monotonic()
        self.saving = False
        self.checkpoint_bytes = max(MIN_PIECE, min(CHECKPOINT_BYTES, self.size // 16))
        self.batch_bytes = BATCH_BYTES
        self.hasher: InOrderHash | None = None

    # -- the whole file ----------------------------------------------------------------------------
    async def run(self) -> tuple[int, str, Path] | None:
        key = str(self.item.key)
        self.tries_done = self.ctx.policy.attempts - 1 if key in self.seg.entered else 0
        self.seg.entered.add(key)
        record = None
        if self.item.maybe_partial or self.item.tried:
            record = await asyncio.to_thread(read_record, self.writer.segs_path)
        self.item.tried = True
        resumed = await self.writer.open_positional(resume=record is not None)
        try:
            await asyncio.to_thread(self._prepare, record if resumed else None)
            await self.seg.slots.take()
            self._spawn()
            await self._wait()
            try:
                sha = await asyncio.to_thread(self.hasher.finish)  # type: ignore[union-attr]
                # Before the rename: see above.
                await asyncio.to_thread(unlink_quietly, self.writer.resolved_segs_path)
            except OSError as exc:  # the disk, as for any write: stops the run (classify)
                raise _disk_error(exc, "cannot finish a download", self.writer.final_path.parent) from exc
            await self.writer.commit_positional(self.size)
            return self.size, sha, self.writer.folder
        except RangeNotServed:
            self.seg.ranges_ok = False
            log.debug("file %s: the server does not serve ranges as asked; fetching it whole", self.item.file_id)
            await self._discard()
            return None
        except (TransientError, LinkExpiredError, asyncio.CancelledError):
            await self._keep()
            raise
        except BaseException:
            await self._discard()
            raise

    def _prepare(self, record: dict[str, Any] | None) -> None:
        """Thread: the pieces (from a matching record, else new), the temp at its full size."""
        w = self.writer
        try:
            st = w.temp_stat()
            pieces = None
            if record is not None and st.st_size == self.size:
                pieces = pieces_from(record, self.item.file_id, self.size, (st.st_dev, st.st_ino))
            if pieces is None:
                w.set_size_sync(self.size)
                pieces = [Piece(0, self.size, 0)]  # all of it waiting: _next_piece cuts it as it goes
            self.pieces = pieces
            self.tail_piece = max(MIN_PIECE, min(TAIL_PIECE, self.size // 32))
            # Small pieces (a small threshold) still go to disk, and into the record, several times each.
            self.batch_bytes = max(64 * 1024, min(BATCH_BYTES, self.tail_piece // 4))
            # Not smaller: the half a thief takes is sent twice as far as the socket buffers hold (the
            # victim's connection is closed with them unread), a few MiB on a LAN.
            self.steal_min = STEAL_MIN
            self.hasher = InOrderHash(w, self.size, self.seg.hash_in_order)
            self.hasher.frontier = self._frontier()
            self._save_sync([(p.start, p.end, p.written) for p in pieces])
        except OSError as exc:
            raise _disk_error(exc, "cannot prepare a download's temp file", w.final_path.parent) from exc

    async def _wait(self) -> None:
        try:
            while self.tasks:
                done, _ = await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    self.tasks.discard(t)
                    if not t.cancelled() and t.exception() is not None and self.error is None:
                        self.error = t.exception()
                        for other in self.tasks:
                            other.cancel()
        except asyncio.CancelledError:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            raise
        if self.error is not None:
            raise self.error
        if any(p.written < p.end for p in self.pieces):
            raise AssertionError("segments ended with bytes missing")  # pragma: no cover

    def _spawn(self) -> None:
        """Start a worker on the slot just taken."""
        t = asyncio.create_task(self._worker(), name=f"segment-{self.item.file_id}")
        self.tasks.add(t)

    def _widen(self) -> None:
        """More connections while slots are free and there is work for them (a piece waiting, or one
        big enough to split)."""
        if self.error is not None:
            return
        waiting = sum(p.end - p.written for p in self.pieces if not p.busy)
        splittable = sum(1 for p in self.pieces if p.busy and p.end - p.written >= 2 * self.steal_min)
        want = (-(-waiting // self.tail_piece)) + splittable  # pieces still to cut, halves to take
        while want > 0 and len(self.tasks) < self.seg.segments and self.seg.slots.try_take():
            self._spawn()
            want -= 1

    async def _worker(self) -> None:
        try:
            while (piece := self._next_piece()) is not None:
                try:
                    await self._fetch_piece(piece)
                finally:
                    piece.busy = False
                self._widen()
        finally:
            self.seg.slots.give()

    def _next_piece(self) -> Piece | None:
        """The next piece to fetch, from the front of what nobody fetches yet: 1/(2N) of what is left,
        down to ``tail_piece``, so the file's prefix completes as it goes (the hash keeps up, and the
        last pieces are small).  With nothing left waiting, the second half of the busy piece with the
        most left (its connection stops at the new end): the connections finish together."""
        self._coalesce()
        waiting = [p for p in self.pieces if not p.busy and p.written < p.end]
        if waiting:
            left = sum(p.end - p.written for p in waiting)
            return self._cut(waiting[0], max(self.tail_piece, left // (2 * self.seg.segments)))
        if self.error is not None:
            return None
        victim = max(self.pieces, key=lambda p: p.end - p.written if p.busy else 0)
        left = victim.end - victim.written
        if not victim.busy or left < 2 * self.steal_min:
            return None
        mid = victim.end - left // 2
        piece = Piece(mid, victim.end, mid, busy=True)
        victim.end = mid
        self.pieces.insert(self.pieces.index(victim) + 1, piece)
        return piece

    def _cut(self, p: Piece, length: int) -> Piece:
        """Take ``length`` bytes (or all, when little more is left) from where ``p`` stands, as a busy piece."""
        at = p.written
        parts = [Piece(p.start, at, at)] if at > p.start else []
        if p.end - at > length + length // 2:
            piece = Piece(at, at + length, at, busy=True)
            parts += [piece, Piece(at + length, p.end, at + length)]
        else:
            piece = Piece(at, p.end, at, busy=True)
            parts.append(piece)
        i = self.pieces.index(p)
        self.pieces[i : i + 1] = parts
        return piece

    def _coalesce(self) -> None:
        """Merge neighbouring finished pieces: the list (and the record) stays short."""
        out: list[Piece] = []
        for p in self.pieces:
            prev = out[-1] if out else None
            if (prev is not None and not prev.busy and not p.busy and prev.written == prev.end
                    and p.written == p.end):
                prev.end = prev.written = p.end
            else:
                out.append(p)
        self.pieces[:] = out

    def _frontier(self) -> int:
        for p in self.pieces:  # every piece before the first unfinished one is complete
            if p.written < p.end:
                return p.written
        return self.size

    # -- one piece ---------------------------------------------------------------------------------
    async def _fetch_piece(self, piece: Piece) -> None:
        async for attempt in self.ctx.policy.retrying(is_retryable, tries_done=self.tries_done):
            with attempt:
                while True:
                    url, gen = await self.link.get()
                    try:
                        await self._fetch_once(piece, url)
                        return
                    except LinkExpiredError:
                        await self.link.renew(gen)  # then go on from where the piece stopped

    async def _fetch_once(self, piece: Piece, url: str) -> None:
        start, asked_end = piece.written, piece.end
        async with self.ctx.client.download_range(url, start, asked_end - 1, self.size) as dl:
            if not self.verified:
                self.verified = True
                self._widen()
            chunks: list[bytes] = []
            at, pending = start, 0
            try:
                async for chunk in dl.iter_chunks():
                    got = at + pending + len(chunk)
                    if got > asked_end:
                        raise ProtocolError("a segment's body goes on past its range")
                    if got >= piece.end:  # its end, or the end left to it since another worker took half
                        chunk = chunk[: len(chunk) - (got - piece.end)]
                        if chunk:
                            chunks.append(chunk)
                            pending += len(chunk)
                        break  # an unread rest closes this connection (aiohttp): the next piece opens one
                    chunks.append(chunk)
                    pending += len(chunk)
                    self.ctx.stats.bytes_moving += len(chunk)
                    if pending >= self.batch_bytes:
                        await self._write(piece, at, chunks)
                        at, pending, chunks = at + pending, 0, []
            finally:
                if chunks:  # what arrived before a cut is good: keep it, the retry goes on after it
                    await self._write(piece, at, chunks)

    async def _write(self, piece: Piece, offset: int, chunks: list[bytes]) -> None:
        n = sum(len(c) for c in chunks)
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, self._write_sync, offset, chunks)
        try:
            await asyncio.shield(fut)
        except OSError as exc:
            raise _disk_error(exc, "cannot write a download", self.writer.final_path.parent) from exc
        piece.written = offset + n
        self.unsaved += n
        self.hasher.frontier = self._frontier()  # type: ignore[union-attr]
        if not self.saving and (self.unsaved >= self.checkpoint_bytes
                                or time.monotonic() - self.saved_at >= CHECKPOINT_SECONDS):
            await self._save()

    def _write_sync(self, offset: int, chunks: list[bytes]) -> None:
        self.writer.pwrite_sync(offset, chunks)
        assert self.hasher is not None
        self.hasher.after_write(offset, chunks)

    # -- the segment record ------------------------------------------------------------------------
    async def _save(self) -> None:
        self.saving = True
        snapshot = [(p.start, p.end, p.written) for p in self.pieces]  # writes that completed only
        self.unsaved = 0
        try:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, self._save_sync, snapshot))
        except OSError as exc:
            raise _disk_error(exc, "cannot record a download's progress", self.writer.final_path.parent) from exc
        finally:
            self.saved_at = time.monotonic()
            self.saving = False

    def _save_sync(self, snapshot: list[tuple[int, int, int]]) -> None:
        self.writer.fsync_sync()  # first: the record must never claim bytes that are not durable
        st = self.writer.temp_stat()
        dev, ino = st.st_dev, st.st_ino
        body = record_body(self.item.file_id, self.size, dev, ino, snapshot)
        path = self.writer.resolved_segs_path
        tmp = path.with_name(path.name + ".new")
        unlink_quietly(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, [body])  # every byte, even after a short write
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    async def _keep(self) -> None:
        """Interrupted (after retries, or stopped): record what is durable and keep the temp."""
        try:
            if self.hasher is not None and not self.writer.failed:
                await asyncio.shield(asyncio.to_thread(
                    self._save_sync, [(p.start, p.end, p.written) for p in self.pieces]))
                await self.writer.abort(keep_partial=True)
                return
        except (OSError, asyncio.CancelledError) as exc:
            log.warning("file %s: cannot keep a partial segmented download (%s)", self.item.file_id,
                        type(exc).__name__)
        await self._discard()

    async def _discard(self) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(unlink_quietly, self.writer.resolved_segs_path))
        except OSError as exc:  # never hides the error that brought us here; the next run starts over
            log.warning("file %s: cannot remove a segment record (%s)", self.item.file_id, type(exc).__name__)
        await self.writer.abort(keep_partial=False)
