"""The restore pipeline: the backup's rows -> per user, a fresh listing and a plan -> M uploaders -> recorder.

Exactly once, through the uploader push uses (:mod:`syncer.push.upload`): an intent row before every
POST, reconciliation of a lost answer by listing and hashing, look-alikes never in flight together.
Before anything is sent for a file, two more checks:

- a row of ours left ``uploading`` (or ``failed`` after an intent) is reconciled first;
- a listed document with the same name, size and category that no other file claims is downloaded
  and hashed: the same sha256 means the file is already there (a rerun after the restore's manifest
  was lost), and it is adopted instead of sent.

The backed-up bytes are hashed and compared with the backup's manifest before the upload; a missing
or changed copy fails the item (naming the file id) and nothing is sent.  ``--mapping-out`` is
rewritten (atomically, 0600) at the end of every run with every pair restored so far.

Logs at info level name users and file ids, never file names.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.api.client import Listing
from syncer.errors import (
    ApiError,
    AuthError,
    Kind,
    LocalIOError,
    NotFoundError,
    classify,
    error_class,
)
from syncer.local.storage import write_private_text
from syncer.logs import scrub
from syncer.manifest import Manifest, Update, now_iso
from syncer.manifest.restore_rows import (
    MAPPING_COLUMNS,
    backup_rows,
    mapping,
    restore_claimed,
    restore_rows_for_user,
    upsert_restore_items,
)
from syncer.models import RemoteFile, Target
from syncer.push.plan import item_id
from syncer.push.upload import (
    EndpointMissing,
    InFlight,
    Stopping,
    Upload,
    Uploader,
    UserRejected,
    upload_failure,
)
from syncer.restore.options import RestoreOptions
from syncer.restore.plan import (
    NOT_RESTORABLE,
    BackupFile,
    RestoreItem,
    Selection,
    maybe_ours,
    plan_user,
    select,
)
from syncer.restore.reader import BackupReader, open_reader
from syncer.run.pool import WorkerPool
from syncer.run.runner import RunContext

log = logging.getLogger("syncer.restore")

LIST_AHEAD = 8      # destination users listed ahead of the planning (the API pool has 8 connections)


@dataclass
class RestoreNotes:
    """What the summary adds for a restore: what was left out, and why (none of it is a failure)."""

    not_restorable: int = 0
    not_restorable_bytes: int = 0
    unmapped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        if self.not_restorable:
            out.append(f"{self.not_restorable} files of visits or of categories an upload cannot carry:"
                       f" {NOT_RESTORABLE}")
        if self.unmapped:
            users = ", ".join(sorted(self.unmapped)[:20]) + (" ..." if len(self.unmapped) > 20 else "")
            out.append(f"{sum(self.unmapped.values())} files of {len(self.unmapped)} users not in the user map"
                       f" (not restored): {users}")
        for reason, n in sorted(self.skipped.items()):
            out.append(f"{n} files skipped: {reason}")
        return out


def label(item: RestoreItem) -> str:
    """How logs name an item: its source file id (never its name)."""
    return item_id(f"{item.source.source_target}/{item.source.file_id}")


def mapping_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MAPPING_COLUMNS)
    for r in rows:
        writer.writerow(["" if r[c] is None else r[c] for c in MAPPING_COLUMNS])
    return out.getvalue()


class RestoreJob:
    kind = "restore"

    def __init__(self, ctx: RunContext, opts: RestoreOptions, *, reader: BackupReader | None = None):
        self.ctx = ctx
        self.opts = opts
        self.reader = reader or open_reader(opts.backup_dest, opts.identities, opts.backup_config)
        self.pool: WorkerPool[tuple[RestoreItem, str]] = WorkerPool(
            ctx, self._one, workers=opts.concurrency, queue_size=max(16, opts.concurrency * 4), name="restore")
        self.claimed: dict[str, set[str]] = {}    # destination user -> documents some file owns
        self.maybe_ours: dict[str, set[str]] = {}  # backed-up documents that may be an interrupted upload
        self.rejected: set[str] = set()
        self.inflight = InFlight()
        self.uploader = Uploader(ctx, self._claimed)
        self.notes = RestoreNotes()

    async def _claimed(self, user_id: str) -> set[str]:
        """What reconciling an earlier POST must not adopt (see ``plan.maybe_ours`` for the exception)."""
        return self.claimed.setdefault(user_id, set()) - self.maybe_ours.get(user_id, set())

    # -- the script ----------------------------------------------------------------------------
    async def run(self) -> None:
        backup = await asyncio.to_thread(Manifest.open, self.opts.backup_manifest, readonly=True)
        try:
            rows = await backup.call(backup_rows, backup)
        finally:
            await asyncio.to_thread(backup.close)
        sel = select(rows, users=self.opts.users, categories=self.opts.categories, dest_for=self.opts.dest_for)
        self._note_selection(sel)
        try:
            await self.pool.run(lambda: self._plan_all(sel))
        finally:
            if self.opts.mapping_out is not None:
                await self._write_mapping()

    def _note_selection(self, sel: Selection) -> None:
        ctx = self.ctx
        n = self.notes
        n.not_restorable, n.not_restorable_bytes = sel.not_restorable, sel.not_restorable_bytes
        n.unmapped = dict(sel.unmapped)
        n.skipped = dict(sel.skipped)
        ctx.stats.left_out += sel.not_restorable + sum(sel.unmapped.values()) + sum(sel.skipped.values())
        self.opts.notes[:] = n.lines()  # for the command's summary
        for line in n.lines():
            ctx.log_event("not_restored", message=line)
        for user in self.opts.users:  # asked for by name and not done: red, as push
            if user in sel.unmapped:  # its files are in the backup, but the map says nowhere to put them
                ctx.stats.left_out -= sel.unmapped[user]  # counted failed instead
                for _ in range(sel.unmapped[user]):
                    ctx.stats.count_failure("failed", "NotInUserMap")
                ctx.log_event("user_not_in_map", level=logging.WARNING, user=user,
                              message=f"user {user}: asked for, but not in the user map: not restored")
            elif user not in sel.by_user:
                ctx.stats.count_failure("failed", "NotInBackup")
                ctx.log_event("user_not_in_backup", level=logging.WARNING, user=user,
                              message=f"user {user}: no restorable file of this user in the backup")

    async def _plan_all(self, sel: Selection) -> None:
        # Listings run up to LIST_AHEAD users ahead of the planning (their own connection pool), so the
        # uploaders are not kept waiting one listing's round trip per user; planning stays in order.
        users = list(sel.by_user.items())
        ahead: collections.deque[asyncio.Task[Listing]] = collections.deque()
        try:
            for i, (source_user, files) in enumerate(users):
                while len(ahead) < LIST_AHEAD and i + len(ahead) < len(users):
                    dest = self.opts.dest_for(users[i + len(ahead)][0])
                    ahead.append(asyncio.create_task(self.ctx.client.list_files(Target("user", dest))))
                if self.ctx.stopping:
                    return
                await self._plan_user(source_user, files, sel, ahead.popleft())
        finally:
            for task in ahead:
                task.cancel()
            await asyncio.gather(*ahead, return_exceptions=True)

    async def _plan_user(self, source_user: str, files: list[BackupFile], sel: Selection,
                         listing_task: asyncio.Task[Listing]) -> None:
        ctx = self.ctx
        opts = self.opts
        dest = opts.dest_for(source_user)
        assert dest is not None  # select() left out users the map does not name
        try:
            listing = await listing_task
        except AuthError as exc:
            ctx.fatal(exc)
            return
        except ApiError as exc:
            ctx.stats.targets_failed += 1  # its files are not restored this run: red
            ctx.log_event("list_failed", level=logging.WARNING, user=dest, error_class=error_class(exc),
                          message=f"user {dest}: cannot list its documents ({scrub(str(exc))}): nothing restored"
                                  " into it this run")
            return
        if not listing.complete:
            ctx.stats.targets_failed += 1
            ctx.log_event("list_incomplete", level=logging.WARNING, user=dest,
                          message=f"user {dest}: {len(listing.bad_items)} listed documents could not be read, so"
                                  " what is already there cannot be told: nothing restored into it this run")
            return
        rows = await ctx.manifest.call(restore_rows_for_user, ctx.manifest, dest)
        claimed = self.claimed.setdefault(dest, set())
        claimed |= await ctx.manifest.call(restore_claimed, ctx.manifest, dest)
        if opts.same_account:  # the destination user's own backed-up documents are nobody's copy
            claimed |= sel.ids_by_user.get(dest, set())
            self.maybe_ours[dest] = maybe_ours(sel, dest, rows)
        same_ids = opts.same_account and dest == source_user
        plan = plan_user(source_user, dest, files, listing.files, rows, same_ids=same_ids, claimed=claimed,
                         dest_account=opts.dest_account, link_pull=opts.link_pull and same_ids)
        ctx.stats.skipped += plan.present + plan.restored
        # Refused for good before and unchanged: not sent again, but not restored either: red every run.
        for reason, count in plan.held_reasons.items():
            for _ in range(count):
                ctx.stats.count_failure("permanent", reason)
        token = opts.tokens.get(dest)
        if token is None:
            if plan.items:  # not restored is not done: the run exits 1 so a cron mail or an alert shows it
                for _ in plan.items:
                    ctx.stats.count_failure("failed", "NoToken")
                ctx.log_event("no_token", level=logging.WARNING, user=dest,
                              message=f"user {dest} has no token in the tokens file: {len(plan.items)} backed-up"
                                      f" files of user {source_user} to restore are not restored")
            return
        if plan.inserts:
            await ctx.manifest.call(upsert_restore_items, ctx.manifest, ctx.run_id, plan.inserts)
        ctx.stats.targets += 1
        ctx.stats.files_total += len(plan.items)
        ctx.stats.bytes_total += plan.todo_bytes
        if plan.held_permanent:
            ctx.log_event("held_permanent", level=logging.WARNING, user=dest,
                          message=f"user {dest}: {plan.held_permanent} files were refused for good before and are"
                                  " unchanged: not sent again (see syncer status)")
        ctx.log_event("planned", level=logging.DEBUG, user=dest, source_user=source_user, todo=len(plan.items),
                      present=plan.present, restored=plan.restored, adoptable=plan.adoptable, renamed=plan.renamed)
        for item in plan.items:
            if ctx.stopping:
                return
            await self.pool.put((item, token))

    # -- the uploaders -------------------------------------------------------------------------
    async def _one(self, job: tuple[RestoreItem, str]) -> None:
        """The one failure funnel: every outcome of an item is classified and recorded here."""
        item, token = job
        ctx = self.ctx
        started = time.monotonic()
        if item.dest_user in self.rejected:
            self._record_failure(item, AuthError(f"the token for user {item.dest_user} was rejected (401)"))
            return
        async with self.inflight.hold(item.dest_user, item.sent_name, item.size):
            try:
                await self._process(item, token)
            except asyncio.CancelledError:
                raise
            except Stopping:
                return
            except UserRejected:
                self._reject_user(item.dest_user)
                self._record_failure(item, AuthError(f"the token for user {item.dest_user} was rejected (401)"))
            except Exception as exc:  # noqa: BLE001 - every item error is recorded, the run goes on
                # AuthError here is the account API key's (listing, a link): fatal like a disk error.
                if isinstance(exc, EndpointMissing) or classify(exc, upload=True) is Kind.FATAL:
                    ctx.fatal(exc)
                else:
                    self._record_failure(item, exc)
            else:
                ctx.log_event("restored", level=logging.DEBUG, user=item.dest_user, item=label(item),
                              file_id=item.source.file_id, duration=round(time.monotonic() - started, 3))

    async def _process(self, item: RestoreItem, token: str) -> None:
        src = item.source
        assert src.sha256 is not None
        # The path is set once the backed-up bytes are checked (reconciling reads none).
        up = Upload(item.dest_user, token, Path(src.local_path), item.sent_name, item.category, src.size,
                    src.sha256, label(item))
        row = item.row or {}
        if item.reconcile:
            found = await self.uploader.reconcile(up, row.get("intent_at"), size=row.get("size"),
                                                  sha256=row.get("sha256"))
            if found is not None:
                await self._record_done(item, found, adopted=True)
                return
        plain = await asyncio.to_thread(self.reader.open, src)
        found = await self._already_there(item)
        if found is not None:
            await self._record_done(item, found, adopted=True)
            return
        up.path, up.body = plain.path, plain.body  # body: an encrypted file's checked plaintext
        remote, adopted = await self.uploader.send(
            up, intent=lambda since: self._intent(item, since),
            unchanged=lambda: asyncio.to_thread(plain.unchanged))
        await self._record_done(item, remote, adopted=adopted)

    async def _already_there(self, item: RestoreItem) -> RemoteFile | None:
        """A listed document with this file's name, size and category whose bytes hash alike, if one is
        not claimed yet (claimed here, before any other await)."""
        claimed = self.claimed.setdefault(item.dest_user, set())
        for cand in item.candidates:
            if cand.id in claimed:
                continue
            try:
                digest = await self.uploader.remote_sha(cand)
            except NotFoundError:
                continue  # deleted since the listing
            if digest == item.source.sha256 and cand.id not in claimed:
                claimed.add(cand.id)
                return cand
        return None

    async def _intent(self, item: RestoreItem, since: float) -> None:
        await self.ctx.recorder.put_and_wait(Update(
            "restore_items", item.key,
            {"state": "uploading", "intent_at": since, "sent_name": item.sent_name, "size": item.size,
             "sha256": item.source.sha256},
            event="intent", bump_attempts=True))

    async def _record_done(self, item: RestoreItem, remote: RemoteFile, *, adopted: bool) -> None:
        ctx = self.ctx
        self.claimed.setdefault(item.dest_user, set()).add(remote.id)
        await ctx.recorder.put_and_wait(Update(
            "restore_items", item.key,
            {"state": "done", "dest_file_id": remote.id, "restored_at": now_iso(), "adopted": int(adopted),
             "last_error": None, "error_class": None},
            event="adopted" if adopted else "restored"))
        ctx.stats.files_done += 1
        ctx.stats.bytes_done += item.size
        if adopted:
            ctx.stats.adopted += 1
            ctx.log_event("adopted", level=logging.DEBUG, user=item.dest_user, item=label(item),
                          file_id=remote.id, message=f"user {item.dest_user}: file {item.source.file_id} is already"
                                                     f" there as {remote.id}; not sent again")

    # -- failures ------------------------------------------------------------------------------
    def _reject_user(self, user: str) -> None:
        if user in self.rejected:
            return
        self.rejected.add(user)
        self.ctx.log_event("token_rejected", level=logging.ERROR, user=user,
                           message=f"the token for user {user} was rejected (401): nothing is restored into that"
                                   " user; fix the tokens file")

    def _record_failure(self, item: RestoreItem, exc: BaseException) -> None:
        ctx = self.ctx
        verdict = upload_failure(exc, item.sent_name, item.source.name, file_id=item.source.file_id)
        ctx.stats.count_failure("permanent" if verdict.permanent else "failed", error_class(exc))
        ctx.recorder.put(Update("restore_items", item.key, verdict.fields, event="failed",
                                error_class=error_class(exc), detail=verdict.detail))
        ctx.log_event("restore_failed", level=logging.WARNING, user=item.dest_user, item=label(item),
                      file_id=item.source.file_id, error_class=error_class(exc),
                      message=f"user {item.dest_user}: {verdict.message}")

    # -- the mapping ---------------------------------------------------------------------------
    async def _write_mapping(self) -> None:
        ctx = self.ctx
        path = self.opts.mapping_out
        assert path is not None
        try:
            await ctx.recorder.flush()
        except Exception as exc:  # noqa: BLE001 - the recorder died: the manifest has what it has
            log.debug("mapping: the recorder could not flush: %s", error_class(exc))
        rows = await ctx.manifest.call(mapping, ctx.manifest)
        try:
            await asyncio.to_thread(write_private_text, path, mapping_csv(rows))
        except OSError as exc:
            ctx.fatal(LocalIOError(f"cannot write the mapping {path}: {exc.strerror or exc}"))
            return
        ctx.log_event("mapping_written", message=f"mapping of {len(rows)} restored files written to {path}")
