"""The download pipeline: list targets → plan against the manifest → N downloaders → the recorder.

Stages are joined by the run's worker pool (a bounded queue), so memory stays flat however many targets
and files there are.  Every download ends in :meth:`PullJob._fetch`, which records it done or hands the
error to :func:`syncer.errors.classify`: failed (retried next run), permanent, or fatal (the run stops;
the item that met it is recorded failed, so ``status`` names it and the next run tries it again).

A target whose listing failed, or that listed no files, is recorded in the manifest's ``scope_failures``
(``status`` shows it) until a later listing of it succeeds with files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from syncer.api.client import LINK_REFRESHES
from syncer.errors import (
    ApiError,
    AuthError,
    ConfigError,
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
from syncer.local.writer import SizeMismatchError
from syncer.manifest import ENCRYPTION_SCHEMA, Update, now_iso
from syncer.models import PullState, Target
from syncer.pull.options import PullOptions
from syncer.pull.plan import WorkItem, plan_and_record
from syncer.pull.segments import Segmenter
from syncer.redact import scrub, without_name
from syncer.run.pool import WorkerPool
from syncer.run.runner import RunContext
from syncer.store import open_sink

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
        self.sink = open_sink(opts.dest, ctx.cfg)  # a folder or a bucket (syncer.store)
        # Twice as many workers as connections: while one worker makes its file durable (fsyncs),
        # another already uses the connection.  The HTTP pool still caps downloads at `concurrency`.
        self.pool: WorkerPool[WorkItem] = WorkerPool(
            ctx, self._fetch, workers=0 if opts.dry_run else 2 * opts.concurrency,
            queue_size=max(16, opts.concurrency * 4), name="download")
        # Transfer slots shared by whole files and big files' Range segments (syncer.pull.segments).
        self.segments = Segmenter(ctx, concurrency=opts.concurrency, threshold=opts.segment_threshold,
                                  segments=opts.segments)
        self.dry_run_report: list[DryRunTarget] = []
        # Stored size and sha256 of each finished file, by key, until recorded (None: a manifest older
        # than the encryption schema, which has no column for them, e.g. a read-only dry run's).
        self._stored: dict[tuple[str, str, str], tuple[int, str]] | None = \
            {} if getattr(ctx.manifest, "version", ENCRYPTION_SCHEMA) >= ENCRYPTION_SCHEMA else None
        self.listed_ok = 0
        self.list_unreachable = 0
        self.scope_open: dict[str, str] = {}  # targets with a failure on record -> its reason
        # This run's findings about whole targets, written in one step when the listing is over.
        self.scope_failed: list[dict[str, str | None]] = []
        self.scope_cleared: list[str] = []

    # -- the script ------------------------------------------------------------------------------
    async def run(self) -> None:
        if not self.opts.recipients and not self.opts.allow_plain:
            # Again, now that the manifest is here (a fresh pod fetched it from the bucket only now).
            from syncer.crypto.policy import refuse_plain

            refuse_plain(await self.ctx.manifest.call(self.ctx.manifest.pull_encrypted_rows))
        if not self.opts.dry_run:
            await self.sink.prepare()
            self.scope_open = await self.ctx.manifest.call(self.ctx.manifest.open_scope_failures, "pull", "target")
        try:
            await self.pool.run(self._list_all)
        finally:
            await self.sink.close()  # the folder's group-commit thread; a bucket's client

    # -- stage 1: listing and planning -----------------------------------------------------------
    async def _list_all(self) -> None:
        targets = iter(self.opts.targets)

        async def lister() -> None:
            for target in targets:
                if self.ctx.stopping:
                    return
                await self._list_one(target)

        n = min(LIST_CONCURRENCY, max(1, len(self.opts.targets)))
        try:
            await asyncio.gather(*(lister() for _ in range(n)))
        finally:
            if self.scope_failed or self.scope_cleared:
                m = self.ctx.manifest
                await m.call(m.sync_scope_failures, "pull", "target", self.scope_failed, self.scope_cleared,
                             run_id=self.ctx.run_id)
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
            ctx.stats.targets_failed += 1
            ctx.log_event("list_failed", target=str(target), error_class=error_class(exc), level=logging.WARNING,
                          message=str(exc))
            self._scope(target, "list_failed", error_class(exc),
                        f"the listing failed after retries ({error_class(exc)})", scrub(str(exc))[:500])
            return
        try:
            presence = await self.sink.presence(target)  # what the folder or bucket already holds
        except SyncerError as exc:
            if classify(exc) is Kind.FATAL:  # refused credentials, a bucket gone
                ctx.fatal(exc)
                return
            ctx.stats.targets_failed += 1
            ctx.log_event("list_failed", target=str(target), error_class=error_class(exc), level=logging.WARNING,
                          message=str(exc))
            self._scope(target, "list_failed", error_class(exc),
                        f"the backup's objects could not be listed ({error_class(exc)})", scrub(str(exc))[:500])
            return
        self.listed_ok += 1
        files = listing.files
        for bad in listing.bad_items:
            ctx.log_event("bad_item", target=str(target), level=logging.WARNING, message=bad)
            ctx.stats.count_failure("failed", "ProtocolError")
        ctx.stats.targets += 1
        if listing.target_missing:
            # The server does not know the target (404): its files, if it has any, are not backed up.
            ctx.stats.targets_failed += 1
            ctx.log_event("target_not_found", target=str(target), level=logging.WARNING,
                          message=f"target {target}: the server does not know it (404)")
            self._scope(target, "not_found", "NotFoundError", "the server does not know this target (404)")
        elif not files and not listing.bad_items:
            ctx.stats.targets_empty += 1
            # One line each at info: the summary counts them and status names them (a clinic may have
            # thousands of patients without files; a warning each would bury the real ones).
            ctx.log_event("listed_nothing", target=str(target), level=logging.INFO,
                          message=f"target {target} listed no files (a mistyped id?)")
            self._scope(target, "listed_nothing", None, "the listing had no files")
        elif listing.bad_items:
            self._scope(target, "incomplete_listing", "ProtocolError",
                        f"{len(listing.bad_items)} items of the listing could not be read")
        else:
            self._scope(target, None, None, None)
        # Planning is mostly Python (GIL-bound) plus a stat per known file: it runs on the manifest's own
        # thread, one step per target (see plan_and_record), so listers never fight over the GIL in the
        # default pool (the measurements are in tests/perf/README.md).
        plan = await ctx.manifest.call(
            plan_and_record, ctx.manifest, None if self.opts.dry_run else ctx.run_id, target, files,
            dest=self.dest, categories=self.opts.categories,
            listing_complete=listing.complete and not listing.target_missing,
            include_shared=self.opts.include_shared, presence=presence,
            encrypt=self.opts.encrypt, reencrypt=self.opts.reencrypt)
        ctx.stats.skipped += plan.up_to_date
        ctx.stats.files_total += len(plan.todo)
        ctx.stats.bytes_total += plan.todo_bytes
        if self.opts.dry_run:
            self.dry_run_report.append(DryRunTarget(target, len(plan.todo), plan.todo_bytes))
            return
        ctx.log_event("listed", level=logging.DEBUG, target=str(target), files=plan.listed, todo=len(plan.todo),
                      deleted=len(plan.deleted))
        for key, old in plan.cleanup:  # a run killed between recording a converted file and removing the old
            await self._remove_replaced(key, old)
        for item in plan.todo:
            if ctx.stopping:
                return
            await self.pool.put(item)

    def _scope(self, target: Target, reason: str | None, err: str | None, detail: str | None,
               server_text: str | None = None) -> None:
        """Note the target's failure (``reason``; ``detail`` a fixed description that status shows,
        ``server_text`` for the audit trail only), or that the one on record is cleared (``reason`` None);
        ``_list_all`` writes them.  Nothing in a dry run, nothing for a sound target with nothing on record."""
        if self.opts.dry_run or (reason is None and str(target) not in self.scope_open):
            return
        if reason is None:
            self.scope_cleared.append(str(target))
        else:
            self.scope_failed.append({"scope_id": str(target), "reason": reason, "error_class": err,
                                      "detail": detail, "event_detail": server_text})

    # -- stage 2: downloading --------------------------------------------------------------------
    async def _fetch(self, item: WorkItem) -> None:
        started = time.monotonic()
        converted = None
        try:
            if item.convert:
                converted = await self._convert(item)
            if converted is not None:
                nbytes, sha, folder = converted
            else:
                nbytes, sha, folder = await self.ctx.policy.call(self._transfer, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every item error is recorded; a fatal one also stops the run
            kind = classify(exc)
            if not isinstance(exc, AuthError):  # a rejected token says nothing about the file
                self._record_failure(item, exc, kind)
            if kind is Kind.FATAL:
                self.ctx.fatal(exc)
            return
        self.ctx.stats.files_done += 1
        self.ctx.stats.bytes_done += nbytes
        fields = {"state": PullState.DONE.value, "sha256": sha, "bytes": nbytes, "done_at": now_iso(),
                  "last_error": None, "error_class": None, "acked_by": None, "acked_at": None, "ack_reason": None}
        if self._stored is not None:
            # How the file is stored, and the stored object's size and digest (verify without a key).
            stored = self._stored.pop(item.key, (nbytes, sha))
            fields.update(encrypted=int(item.encrypted), stored_size=stored[0], stored_sha256=stored[1])
        update = Update("pull_items", item.key, fields, event="converted" if converted else "done",
                        bump_attempts=True, sync_dir=str(folder) if folder is not None else None)
        if item.replaces:
            # The file it replaces (stored the other way) goes only once this one is recorded.
            await self.ctx.recorder.put_and_wait(update)
            await self._remove_replaced(item.key, item.replaces)
        else:
            self.ctx.recorder.put(update)
        if log.isEnabledFor(logging.DEBUG):
            self.ctx.log_event("downloaded", level=logging.DEBUG, file_id=item.file_id, target=str(item.target),
                               bytes=nbytes, duration=round(time.monotonic() - started, 3))

    async def _convert(self, item: WorkItem) -> tuple[int, str, Path] | None:
        """``--reencrypt``: encrypt the local plain copy; None (download it instead) when it is gone or
        not the recorded file.  A disk error stops the run, as for downloads.  (Folder sinks only: a
        bucket's plain objects are fetched again, encrypted, see ``syncer.pull.plan``.)"""
        from syncer.crypto.convert import LocalCopyChanged, convert_plain

        assert item.replaces is not None and item.sha256 is not None
        if self.sink.kind != "folder":
            return None  # no local copy of a bucket's object: it is fetched again, encrypted
        try:
            size, sha, stored_size, stored_sha, folder = await asyncio.to_thread(
                convert_plain, Path(self.dest), item.replaces, item.local_path, self.opts.recipients,
                size=item.size, sha256=item.sha256)
        except (LocalCopyChanged, UnsafeNameError) as exc:
            # The message may hold the local path (a patient's file name): the class says enough.
            self.ctx.log_event("convert_fallback", level=logging.WARNING, file_id=item.file_id,
                               target=str(item.target), error_class=error_class(exc),
                               message="the backed-up copy cannot be encrypted in place; downloading it again")
            return None
        except OSError as exc:
            raise LocalIOError(f"cannot encrypt a backed-up file in {self.dest}: {exc.strerror or exc}") from exc
        if self._stored is not None:
            self._stored[item.key] = (stored_size, stored_sha)
        return size, sha, folder

    async def _remove_replaced(self, key: tuple[str, str, str], old: str) -> None:
        from syncer.crypto.convert import remove_old

        try:
            if self.sink.kind == "folder":
                await asyncio.to_thread(remove_old, Path(self.dest), old)
            else:
                await self.sink.remove(old)
        except (OSError, SyncerError) as exc:  # a disk's, or a store's (translated)
            # Kept in prior_path: the next run tries again.
            why = getattr(exc, "strerror", None) or exc
            self.ctx.log_event("remove_failed", level=logging.WARNING, item="/".join(key),
                               message=f"cannot remove a file stored the old way: {why}")
            return
        self.ctx.recorder.put(Update("pull_items", key, {"prior_path": None}, event="removed_prior"))

    def _record_failure(self, item: WorkItem, exc: BaseException, kind: Kind) -> None:
        """Record and count one item's failure.  A fatal one (the disk) is recorded as failed: like any
        cause on our side it is never permanent, and ``status`` names the file it hit."""
        permanent = kind is Kind.PERMANENT
        state = PullState.PERMANENT if permanent else PullState.FAILED
        # An acknowledged item failing for good again is not news; failing any other way, it is.
        counted = "acknowledged" if permanent and item.acked else ("permanent" if permanent else "failed")
        self.ctx.stats.count_failure(counted, error_class(exc))
        message = scrub(str(exc)) if isinstance(exc, SyncerError) else scrub(f"unexpected error: {exc!r}")
        if item.file_id not in message:
            message = f"file {item.file_id}: {message}"
        # The server's own words (they may name the patient or the file) go only into the event's detail,
        # the file's name taken out; the row, the log and the summary keep our message.
        detail = detail_of(exc)
        detail = without_name(detail, item.name) if detail else message
        try:
            self.ctx.recorder.put(Update(
                "pull_items", item.key,
                {"state": state.value, "last_error": message[:500], "error_class": error_class(exc)},
                event="failed", bump_attempts=True, error_class=error_class(exc), detail=detail[:500]))
        except SyncerError:
            if kind is not Kind.FATAL:
                raise
            # The manifest's own disk failed too: the run stops on this error; the row stays as it was.
        self.ctx.log_event("download_failed", file_id=item.file_id, target=str(item.target),
                           error_class=error_class(exc), level=logging.INFO if counted == "acknowledged"
                           else logging.WARNING, message=message)

    async def _transfer(self, item: WorkItem) -> tuple[int, str, Path | None]:
        """One attempt: stream the file to a hidden temp, check it, make it durable, rename it.

        Returns the bytes, the sha256 and the folder, which the recorder fsyncs (once for every file
        renamed into it meanwhile) before it records the file as done."""
        # Only a lexical check here, on the event loop: the writer resolves the folder (symlinks
        # included) with ensure_inside in its own thread before it creates anything.
        rel = item.local_path
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise UnsafeNameError(f"file {item.file_id}: its local path would leave the destination")
        if item.encrypted and not self.opts.recipients:
            raise ConfigError("an encrypted file is due but no recipient is configured")
        from syncer.crypto.sinkwriter import writer_for  # the sink's writer, behind age when encrypted

        writer = writer_for(self.sink, item.local_path, expected_size=item.size, replace=item.replace,
                            recipients=self.opts.recipients if item.encrypted else (), owner=item.file_id)
        if not item.encrypted and self.segments.wants(item, writer):  # a big plain file into a folder
            done = await self.segments.transfer(item, writer)  # None: the server does not serve ranges
            if done is not None:
                return done
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
                    async with self.segments.download(url, offset=offset) as dl:
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
                        if self._stored is not None and item.encrypted:
                            # Plain files (and any sink's) are stored as received: no entry, the
                            # plaintext's size and digest are recorded for the stored object too.
                            self._stored[item.key] = (writer.stored_size, writer.stored_sha256)
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
