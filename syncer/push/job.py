"""The upload pipeline: scan ``<source>/<user_id>/**`` → plan against the manifest → M uploaders → recorder.

Every regular file below a user's folder is uploaded once, as that user (with the user's own token from
the tokens file), under its base name.  How "exactly once" holds, since ``POST /files`` is not idempotent:

- The uploader (:mod:`syncer.push.upload`, shared with restore) commits an intent before every POST,
  never re-sends a POST whose outcome is unknown before it has looked for (and hashed) what it may have
  stored, and keeps two look-alike files (same user, name, size) from being in flight together.
- Rows left ``uploading`` (or ``failed`` after an intent) by an earlier run are reconciled the same way
  before anything else is done with them; a document another local file owns is never adopted.
- A file that was uploaded and later changes (its sha256 differs) is uploaded again as a new document;
  the old document stays on the server and both uploads are kept in ``push_uploads``.  A file that was
  only touched (same sha256) is not uploaded again.
- A file that changes while it is being uploaded fails (retried next run).  If the server stored it, the
  stored bytes are checked: a clean copy of what was hashed is kept and recorded, anything else (a mix of
  old and new bytes) is deleted so it cannot pass for the file.

Logs at info level name users and item ids (a short hash of the relative path), never file names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from syncer.errors import (
    AuthError,
    Kind,
    LocalIOError,
    classify,
    error_class,
)
from syncer.manifest import Manifest, Update
from syncer.models import PushState, RemoteFile
from syncer.push.plan import (
    DryRunUser,
    PushItem,
    PushOptions,
    Snapshot,
    SourceProblem,
    UserPlan,
    file_ident,
    item_id,
    no_token_problem,
    plan_dry,
    plan_user,
    take_snapshot,
    unreadable_user_problem,
    user_folders,
)
from syncer.push.upload import (
    CLOCK_SLACK,
    EndpointMissing,
    InFlight,
    Stopping,
    Upload,
    Uploader,
    UserRejected,
    upload_failure,
)
from syncer.run.pool import WorkerPool
from syncer.run.runner import RunContext

__all__ = ["CLOCK_SLACK", "DryRunUser", "PushItem", "PushJob", "PushOptions", "UserPlan", "item_id",
           "plan_dry", "plan_user", "user_folders"]

log = logging.getLogger("syncer.push")

class PushJob:
    kind = "push"

    def __init__(self, ctx: RunContext, opts: PushOptions):
        self.ctx = ctx
        self.opts = opts
        self.pool: WorkerPool[PushItem] = WorkerPool(ctx, self._one, workers=opts.concurrency,
                                                     queue_size=max(16, opts.concurrency * 4), name="upload")
        self.rejected: set[str] = set()           # users whose token got a 401
        self.users_with_items: set[str] = set()
        self.planning_done = False
        self._inflight = InFlight()
        self.uploader = Uploader(ctx, self._claimed)
        self.problems: list[SourceProblem] = []   # what is not uploaded, for the counts and the manifest

    # -- the script ----------------------------------------------------------------------------
    async def run(self) -> None:
        async def produce() -> None:
            await self._scan_all()
            self.planning_done = True
            self._check_all_rejected()

        await self.pool.run(produce)

    # -- stage 1: scan and plan ----------------------------------------------------------------
    async def _scan_all(self) -> None:
        ctx = self.ctx
        try:
            folders, problems = await asyncio.to_thread(user_folders, self.opts.source, self.opts.users,
                                                        exclude=self.opts.exclude)
        except OSError as exc:
            raise LocalIOError(f"cannot read the push source {self.opts.source}: {exc.strerror or exc}") from exc
        for problem in problems:
            self._problem(problem)
        scanned = [p.scope_id for p in problems if p.scope == "user"]  # asked for with --user, no folder
        for user, folder in folders:
            if ctx.stopping:
                break
            scanned.append(user)
            await self._scan_user(user, folder)
        # What this scan saw replaces what earlier ones recorded (a fixed problem disappears from status).
        await ctx.manifest.call(ctx.manifest.sync_source_problems, ctx.run_id, self.problems, scanned,
                                every_user=not self.opts.users and not ctx.stopping)

    def _problem(self, problem: SourceProblem) -> None:
        """Not uploaded, so failed: counted (the run exits 1), logged without any name, recorded at the end."""
        self.problems.append(problem)
        for _ in range(problem.files):  # the metrics' reason label: what kept them from being uploaded
            self.ctx.stats.count_failure("failed", f"NotUploaded:{problem.reason}")
        self.ctx.log_event("not_uploaded", level=logging.WARNING, reason=problem.reason, scope=problem.scope,
                           scope_id=problem.scope_id, message=problem.message)

    async def _scan_user(self, user: str, folder: Path) -> None:
        ctx = self.ctx
        rows = await ctx.manifest.call(ctx.manifest.push_rows_for_user, user)
        try:
            plan = await asyncio.to_thread(plan_user, user, folder, rows, exclude=self.opts.exclude)
        except OSError as exc:
            self._problem(unreadable_user_problem(user, exc))
            return
        for problem in plan.problems:
            self._problem(problem)
        skipped = sum(plan.skipped.values())
        ctx.stats.skipped += plan.up_to_date
        ctx.stats.left_out += skipped  # symbolic links, special files, dotfiles: never uploaded
        # Refused for good before and unchanged: not sent again, but not backed up either: red every run
        # until the file changes or an operator acknowledges it (syncer ack push).
        for reason, n in plan.held_reasons.items():
            for _ in range(n):
                ctx.stats.count_failure("permanent", reason)
        for _ in range(plan.held_acked):
            ctx.stats.count_failure("acknowledged", "acknowledged")
        if plan.unsendable:
            for _ in range(plan.unsendable):
                ctx.stats.count_failure("permanent", "UnsendableName")
            ctx.log_event("bad_names", level=logging.WARNING, user=user,
                          message=f"user {user}: {plan.unsendable} file names are not valid UTF-8 and cannot"
                                  " be uploaded (rename them; --log-level debug shows which)")
        if plan.skipped.get("symlink"):
            ctx.log_event("symlinks_skipped", user=user,
                          message=f"skipped {plan.skipped['symlink']} symlinks for user {user} (never followed)")
        if plan.held_permanent - plan.held_acked:
            ctx.log_event("held_permanent", level=logging.WARNING, user=user,
                          message=f"user {user}: {plan.held_permanent - plan.held_acked} files were refused for good"
                                  " before and are unchanged: not sent again, not migrated (see syncer status;"
                                  " change the file, or acknowledge it with syncer ack push)")
        if user not in self.opts.tokens and plan.items:
            # Not uploaded is not done: the run exits 1 so a cron mail or an alert shows it, and status lists it.
            self._problem(no_token_problem(user, len(plan.items)))
            return
        ctx.stats.targets += 1
        if plan.inserts:
            await ctx.manifest.call(ctx.manifest.upsert_push_items, ctx.run_id, plan.inserts)
        uploads = [i for i in plan.items if not i.missing]
        ctx.stats.files_total += len(uploads)
        ctx.stats.bytes_total += plan.todo_bytes
        ctx.log_event("scanned", level=logging.DEBUG, user=user,
                      message=f"user {user}: {len(uploads)} files to upload, {plan.up_to_date} up to date,"
                              f" {skipped} skipped")
        if plan.items:
            self.users_with_items.add(user)
        for item in plan.items:
            if ctx.stopping:
                return
            await self.pool.put(item)

    # -- stage 2: upload -----------------------------------------------------------------------
    async def _one(self, item: PushItem) -> None:
        """The one failure funnel: every outcome of an item is classified and recorded here."""
        started = time.monotonic()
        if item.user_id in self.rejected:
            self._record_failure(item, _rejected_error(item.user_id))
            return
        async with self._inflight.hold(item.user_id, item.name, item.size):  # look-alikes one at a time
            await self._process_funnel(item, started)

    async def _process_funnel(self, item: PushItem, started: float) -> None:
        ctx = self.ctx
        try:
            await self._process(item)
        except asyncio.CancelledError:
            raise
        except Stopping:
            return
        except UserRejected:
            self._reject_user(item.user_id)
            self._record_failure(item, _rejected_error(item.user_id))
        except Exception as exc:  # noqa: BLE001 - every item error is recorded, the run goes on
            # AuthError here is the account API key's (a link, a torn copy's delete): fatal like a disk error.
            if isinstance(exc, EndpointMissing) or classify(exc, upload=True) is Kind.FATAL:
                ctx.fatal(exc)
            else:
                self._record_failure(item, exc)
        else:
            ctx.log_event("pushed", level=logging.DEBUG, user=item.user_id, item=item_id(item.rel_path),
                          duration=round(time.monotonic() - started, 3))

    async def _process(self, item: PushItem) -> None:
        ctx = self.ctx
        row = item.row or {}
        if item.reconcile:
            found = await self._reconcile(item, row.get("size"), row.get("sha256"), row.get("intent_at"))
            if found is not None:
                await self._record_upload(item, found, row.get("sha256"), row["size"], adopted=True)
                if item.missing or (row["size"], row["mtime_ns"]) == (item.size, item.mtime_ns):
                    return
                row = {**row, "state": PushState.DONE.value}  # the file changed since: send the new content
            elif item.missing:
                ctx.stats.left_out += 1  # gone from the source: no longer selected
                ctx.recorder.put(Update("push_items", item.key,
                                        {"state": PushState.FAILED.value, "intent_at": None,
                                         "last_error": "the local file is gone; nothing was stored",
                                         "error_class": "Missing"}, event="gone"))
                return
        if item.missing:
            return
        snap = await self._snapshot(item, row)
        if row.get("state") == PushState.DONE and snap.sha256 == row.get("sha256"):
            # Touched, not changed: the document on the server already holds these bytes.
            ctx.stats.files_total -= 1
            ctx.stats.bytes_total -= item.size
            ctx.stats.skipped += 1
            ctx.recorder.put(Update("push_items", item.key, {"size": snap.size, "mtime_ns": snap.mtime_ns},
                                    event="touched"))
            return
        remote, adopted = await self._upload(item, snap)
        await self._record_upload(item, remote, snap.sha256, snap.size, adopted=adopted)

    async def _snapshot(self, item: PushItem, row: dict[str, Any]) -> Snapshot:
        """Stat and (unless the manifest already knows this exact content) hash the file: one thread hop."""
        return await asyncio.to_thread(take_snapshot, item.path, row)

    async def _unchanged(self, item: PushItem, snap: Snapshot) -> bool:
        try:
            st = await asyncio.to_thread(os.lstat, item.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and file_ident(st) == snap.ident

    def _upload_of(self, item: PushItem, size: int, sha256: str) -> Upload:
        return Upload(item.user_id, self.opts.tokens[item.user_id], item.path, item.name, self.opts.category,
                      size, sha256, item_id(item.rel_path))

    async def _upload(self, item: PushItem, snap: Snapshot) -> tuple[RemoteFile, bool]:
        """POST the file through the shared uploader (intent first, reconcile after an unknown outcome).
        Returns the remote file and whether it was adopted (found, not answered)."""
        async def intent(since: float) -> None:
            await self.ctx.recorder.put_and_wait(Update(
                "push_items", item.key,
                {"state": PushState.UPLOADING.value, "intent_at": since, "size": snap.size,
                 "mtime_ns": snap.mtime_ns, "sha256": snap.sha256},
                event="intent", bump_attempts=True))

        return await self.uploader.send(self._upload_of(item, snap.size, snap.sha256), intent=intent,
                                        unchanged=lambda: self._unchanged(item, snap))

    async def _claimed(self, user_id: str) -> set[str]:
        """Remote documents some local file already owns (never adopted for another)."""
        return await self.ctx.manifest.call(self.ctx.manifest.push_claimed_remote_ids, user_id)

    async def _record_upload(self, item: PushItem, remote: RemoteFile, sha: str | None, size: int, *,
                             adopted: bool) -> None:
        ctx = self.ctx
        # The history row and the state change commit together, grouped with other files' outcomes;
        # the worker waits for that commit before anything else happens to this file.
        await ctx.recorder.put_and_wait(Manifest.push_upload_update(
            ctx.run_id, item.user_id, item.rel_path, sha, size, remote.id, remote.name, adopted))
        if adopted:
            ctx.stats.adopted += 1
            ctx.log_event("adopted", level=logging.DEBUG, user=item.user_id, item=item_id(item.rel_path),
                          file_id=remote.id,
                          message=f"user {item.user_id}: an upload whose answer was lost was found stored"
                                  f" ({remote.id}); not sent again")
        if not item.missing:
            ctx.stats.files_done += 1
            ctx.stats.bytes_done += size

    # -- reconcile -----------------------------------------------------------------------------
    async def _reconcile(self, item: PushItem, size: int | None, sha: str | None,
                         since: float | None) -> RemoteFile | None:
        """The user's document that an earlier POST of this file stored, or None if there is none."""
        return await self.uploader.reconcile(self._upload_of(item, size or 0, sha or ""), since, size=size,
                                             sha256=sha)

    # -- failures ------------------------------------------------------------------------------
    def _reject_user(self, user: str) -> None:
        if user in self.rejected:
            return
        self.rejected.add(user)
        self.ctx.log_event("token_rejected", level=logging.ERROR, user=user,
                           message=f"the token for user {user} was rejected (401): that user's files are not"
                                   " uploaded; fix the tokens file")
        self._check_all_rejected()

    def _check_all_rejected(self) -> None:
        if self.planning_done and self.users_with_items and self.users_with_items <= self.rejected:
            self.ctx.fatal(AuthError("the token of every user with files to upload was rejected (401):"
                                     " check the tokens file"))

    def _record_failure(self, item: PushItem, exc: BaseException) -> None:
        ctx = self.ctx
        verdict = upload_failure(exc, item.name)
        ctx.stats.count_failure("permanent" if verdict.permanent else "failed", error_class(exc))
        fields = dict(verdict.fields)
        if verdict.permanent:  # a new refusal voids an earlier acknowledgement (syncer ack push)
            fields.update(acked_by=None, acked_at=None, ack_reason=None)
        ctx.recorder.put(Update("push_items", item.key, fields, event="failed",
                                error_class=error_class(exc), detail=verdict.detail))
        ctx.log_event("upload_failed", level=logging.WARNING, user=item.user_id, item=item_id(item.rel_path),
                      error_class=error_class(exc), message=f"user {item.user_id}: {verdict.message}")


def _rejected_error(user: str) -> AuthError:
    return AuthError(f"the token for user {user} was rejected (401)")
