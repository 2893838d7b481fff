"""``syncer restore --dry-run``: the same plan as a restore, per user, with nothing sent and nothing written.

Both manifests are opened read-only (the restore's only if it exists); the destination users are listed
with the account API key.  Documents that look like a file (name, size, category) are reported as
"may be already there": telling for sure means downloading them, which a dry run does not do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from syncer.config import Config
from syncer.errors import ApiError
from syncer.manifest import Manifest
from syncer.manifest.restore_rows import backup_rows, restore_claimed, restore_rows_for_user
from syncer.models import Target
from syncer.restore.options import RestoreOptions
from syncer.restore.plan import plan_user, select


@dataclass
class DryRunUser:
    source_user: str
    dest_user: str
    files: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class DryRunReport:
    users: list[DryRunUser] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)   # what is left out and why
    would_fail: int = 0  # files a real run would count as failed (no token, a user not listable, refused)


async def dry_run(cfg: Config, opts: RestoreOptions, token: str) -> DryRunReport:
    from syncer.report.listing import open_client
    from syncer.restore.job import RestoreNotes

    backup = Manifest.open(opts.backup_manifest, readonly=True)
    try:
        rows = backup_rows(backup)
    finally:
        backup.close()
    sel = select(rows, users=opts.users, categories=opts.categories, dest_for=opts.dest_for)
    report = DryRunReport(lines=RestoreNotes(sel.not_restorable, sel.not_restorable_bytes, dict(sel.unmapped),
                                             dict(sel.skipped)).lines())
    path = Path(cfg.manifest.path)
    own = Manifest.open(path, readonly=True) if path.is_file() else None  # noqa: ASYNC240 - once, a dry run
    try:
        async with open_client(cfg, token) as client:
            for source_user, files in sel.by_user.items():
                dest = opts.dest_for(source_user)
                assert dest is not None
                row = DryRunUser(source_user, dest)
                report.users.append(row)
                try:
                    listing = await client.list_files(Target("user", dest))
                except ApiError as exc:
                    row.notes.append(f"cannot list the user ({type(exc).__name__}): {len(files)} files would fail")
                    report.would_fail += len(files)
                    continue
                done = restore_rows_for_user(own, dest) if own is not None else {}
                claimed = restore_claimed(own, dest) if own is not None else set()
                if opts.same_account:
                    claimed |= sel.ids_by_user.get(dest, set())
                same_ids = opts.same_account and dest == source_user
                plan = plan_user(source_user, dest, files, listing.files, done, same_ids=same_ids, claimed=claimed)
                row.files, row.bytes = len(plan.items), plan.todo_bytes
                if plan.items and dest not in opts.tokens:
                    row.notes.append(f"no token: these {len(plan.items)} files would fail")
                    report.would_fail += len(plan.items)
                report.would_fail += plan.held_permanent
                for n, what in ((plan.present, "still on the server"), (plan.restored, "restored before"),
                                (plan.adoptable, "may be already there (same name and size: hashed in a real run)"),
                                (plan.held_permanent, "refused for good before"),
                                (plan.renamed, "sent with control characters replaced by '_'")):
                    if n:
                        row.notes.append(f"{n} {what}")
    finally:
        if own is not None:
            own.close()
    return report
