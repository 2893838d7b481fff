"""The download pipeline: list targets → plan against the manifest → N downloaders → the recorder.

Stages are joined by the run's worker pool (a bounded queue), so memory stays flat however many targets
and files there are.  Every download ends in :meth:`PullJob._fetch`, which records it done or hands the
error to :func:`syncer.errors.classify`: failed (retried next run), permanent, or fatal (the run stops).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from syncer.api.client import LINK_REFRESHES
from syncer.errors import (
    ApiError,
    AuthError,
    ConnectionFailed,
    IntegrityError,
    ItemError,
    Kind,
    LinkExpiredError,
    LocalIOError,
    ProtocolError,
    SyncerError,
    TransientError,
    UnsafeNameError,
    classify,
    detail_of,
    error_class,
)
from syncer.local.storage import make_dirs
from syncer.local.writer import AtomicWriter, SizeMismatchError
from syncer.manifest import Update, now_iso
from syncer.models import PullState, Target
from syncer.pull.options import PullOptions
from syncer.pull.plan import WorkItem, plan_and_record
from syncer.redact import scrub, without_name
from syncer.run.pool import WorkerPool
from syncer.run.runner import RunContext

log = logging.getLogger("syncer.pull")

LIST_CONCURRENCY = 8        # targets listed at once (each answer can hold thousands of files)


@dataclass
class DryRunTarget:
    target: Target
    files: int
    bytes: int


class PullJob:
    kind = "pull"

    def __init__(self, ctx: RunContext, opts: PullOptions):
        self.ctx = ctx
        self.opts = opts
        self.dest = opts.dest
        # Twice as many workers as connections: while one worker makes its file durable (fsyncs),
        # another already uses the connection.  The HTTP pool still caps downloads at `concurrency`.
        self.pool: WorkerPool[WorkItem] = WorkerPool(
            ctx, self._fetch, workers=0 if opts.dry_run else 2 * opts.concurrency,
            queue_size=max(16, opts.concurrency * 4), name="download")
        self.dry_run_report: list[DryRunTarget] = []
        self.listed_ok = 0
        self.list_unreachable = 0

    # -- the script ------------------------------------------------------------------------------
    async def run(self) -> None:
        if not self.opts.dry_run:
            await asyncio.to_thread(self._prepare_dest)
        await self.pool.run(self._list_all)

    def _prepare_dest(self) -> None:
        try:
            make_dirs(self.dest, self.dest)
            probe = self.dest / ".syncer-write-test"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
            probe.unlink()
        except OSError as exc:
            raise LocalIOError(f"cannot write to the destination {self.dest}: {exc.strerror or exc}") from exc

    # -- stage 1: listing and planning -----------------------------------------------------------
    async def _list_all(self) -> None:
        targets = iter(self.opts.targets)

        async def lister() -> None:
            for target in targets:
                if self.ctx.stopping:
                    return
                await self._list_one(target)

        n = min(LIST_CONCURRENCY, max(1, len(self.opts.targets)))
        await asyncio.gather(*(lister() for _ in range(n)))
        if self.listed_ok == 0 and self.list_unreachable and not self.ctx.stopping:
            self.ctx.fatal(ConnectionFailed(
                f"the API is unreachable: listing failed for all {self.list_unreachable} targets after retries"))

    async def _list_one(self, target: Target) -> None:
        ctx = self.ctx
        category = self.opts.categories[0] if len(self.opts.categories) == 1 else None
        try:
            listing = await ctx.client.list_files(target, category=category,
                                                  include_shared=self.opts.include_shared)
        except AuthError as exc:
            ctx.fatal(exc)
            return
        except ApiError as exc:
            if isinstance(exc, TransientError):
                self.list_unreachable += 1
            ctx.stats.failed += 1
            ctx.log_event("list_failed", target=str(target), error_class=error_class(exc), level=logging.WARNING,
                          message=str(exc))
            return
        self.listed_ok += 1
        files = listing.files
        for bad in listing.bad_items:
            ctx.log_event("bad_item", target=str(target), level=logging.WARNING, message=bad)
            ctx.stats.failed += 1
        ctx.stats.targets += 1
        # Planning is mostly Python (GIL-bound) plus a stat per known file: it runs on the manifest's own
        # thread, one step per target (see plan_and_record), so listers never fight over the GIL in the
        # default pool (the measurements are in tests/perf/README.md).
        plan = await ctx.manifest.call(
            plan_and_record, ctx.manifest, None if self.opts.dry_run else ctx.run_id, target, files,
            dest=self.dest, categories=self.opts.categories,
            listing_complete=listing.complete and not listing.target_missing)
        ctx.stats.skipped += plan.up_to_date
        ctx.stats.files_total += len(plan.todo)
        ctx.stats.bytes_total += plan.todo_bytes
        if self.opts.dry_run:
            self.dry_run_report.append(DryRunTarget(target, len(plan.todo), plan.todo_bytes))
            return
        ctx.log_event("listed", level=logging.DEBUG, target=str(target), files=plan.listed, todo=len(plan.todo),
                      deleted=len(plan.deleted))
        for item in plan.todo:
            if ctx.stopping:
                return
            await self.pool.put(item)

    # -- stage 2: downloading --------------------------------------------------------------------
    async def _fetch(self, item: WorkItem) -> None:
        started = time.monotonic()
        try:
            nbytes, sha, folder = await self.ctx.policy.call(self._transfer, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every item error is recorded, the run goes on
            if classify(exc) is Kind.FATAL:
                self.ctx.fatal(exc)
            else:
                self._record_failure(item, exc)
            return
        self.ctx.stats.files_done += 1
        self.ctx.stats.bytes_done += nbytes
        self.ctx.recorder.put(Update(
            "pull_items", item.key,
            {"state": PullState.DONE.value, "sha256": sha, "bytes": nbytes, "done_at": now_iso(),
             "last_error": None, "error_class": None},
            event="done", bump_attempts=True, sync_dir=str(folder)))
        self.ctx.log_event("downloaded", level=logging.DEBUG, file_id=item.file_id, target=str(item.target),
                           bytes=nbytes,
                           duration=round(time.monotonic() - started, 3))

    def _record_failure(self, item: WorkItem, exc: BaseException) -> None:
        permanent = classify(exc) is Kind.PERMANENT
        state = PullState.PERMANENT if permanent else PullState.FAILED
        if permanent:
            self.ctx.stats.permanent += 1
        else:
            self.ctx.stats.failed += 1
        message = scrub(str(exc)) if isinstance(exc, SyncerError) else scrub(f"unexpected error: {exc!r}")
        if item.file_id not in message:
            message = f"file {item.file_id}: {message}"
        # The server's own words (they may name the patient or the file) go only into the event's detail,
        # the file's name taken out; the row, the log and the summary keep our message.
        detail = detail_of(exc)
        detail = without_name(detail, item.name) if detail else message
        self.ctx.recorder.put(Update(
            "pull_items", item.key,
            {"state": state.value, "last_error": message[:500], "error_class": error_class(exc)},
            event="failed", bump_attempts=True, error_class=error_class(exc), detail=detail[:500]))
        self.ctx.log_event("download_failed", file_id=item.file_id, target=str(item.target),
                           error_class=error_class(exc), level=logging.WARNING, message=message)

    async def _transfer(self, item: WorkItem) -> tuple[int, str, Path]:
        """One attempt: stream the file to a hidden temp, check it, make it durable, rename it.

        Returns the bytes, the sha256 and the folder, which the recorder fsyncs (once for every file
        renamed into it meanwhile) before it records the file as done."""
        # Only a lexical check here, on the event loop: the writer resolves the folder (symlinks
        # included) with ensure_inside in its own thread before it creates anything.
        rel = Path(item.local_path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise UnsafeNameError(f"file {item.file_id}: its local path would leave the destination")
        writer = AtomicWriter(self.dest / rel, root=self.dest, expected_size=item.size, sync_dir=False)
        url = item.fullpath
        for _ in range(LINK_REFRESHES + 1):
            if not url:
                url = await self._fresh_link(item)
            # A partial temp left by an interrupted attempt or run: ask for the rest (Range).  The
            # planner saw which folders hold partial files; otherwise only a retry can find one.
            offset = writer.existing_bytes() if item.size and (item.maybe_partial or item.tried) else 0
            item.tried = True
            try:
                try:
                    async with self.ctx.client.download(url, offset=offset) as dl:
                        limit = item.size
                        if limit is None:
                            # No size in the listing: the answer's own length bounds (and checks) the body.
                            # With neither, a body could go on until the disk is full: refuse it.
                            if dl.total_size is None:
                                raise ProtocolError("neither the listing nor the download gives the file's size;"
                                                    " an unbounded download is refused")
                            limit = dl.total_size
                        # The bytes received may seed a Range resume only if this answer announced the
                        # file's own size: a page, a junk or endless body, a wrong size is no prefix of it.
                        resumable = item.size is not None and dl.total_size == item.size
                        await writer.open(dl.offset)
                        try:
                            async for chunk in dl.iter_chunks(limit=limit):
                                await writer.write(chunk)
                                self.ctx.stats.bytes_moving += len(chunk)
                        except BaseException as exc:
                            # Keep what arrived only when the transfer broke off (cut, reset, timeout,
                            # stop); an answer that broke the contract leaves nothing behind.
                            await writer.abort(keep_partial=resumable and isinstance(
                                exc, (TransientError, asyncio.CancelledError)))
                            raise
                    # The body is in and the connection back in the pool: the fsyncs of commit() do
                    # not hold a download slot (run() starts twice as many workers as connections).
                    try:
                        nbytes, sha = await writer.commit()
                        return nbytes, sha, writer.folder
                    finally:
                        await writer.abort(keep_partial=False)  # a no-op after commit()
                except SizeMismatchError as exc:
                    raise IntegrityError(
                        f"file {item.file_id}: received a different number of bytes than its size") from exc
            except LinkExpiredError:
                url = None  # ask for a fresh fullpath and go on
                continue
            except ProtocolError as exc:
                raise ItemError(f"file {item.file_id}: {exc}") from exc
        raise LinkExpiredError(f"file {item.file_id}: the view link kept expiring")

    async def _fresh_link(self, item: WorkItem) -> str:
        info = await self.ctx.client.file_info(item.file_id)
        if not info.fullpath:
            raise ProtocolError(f"file {item.file_id}: the server gave no fullpath")
        return info.fullpath
