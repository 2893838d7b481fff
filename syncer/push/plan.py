"""Planning a push: which user folders, which files, and what each needs, against the manifest.

Pure logic over the local disk (walks and stats, never a hash, never the network) and the manifest's rows;
the job in :mod:`syncer.push.job` does the rest.  Layout: ``<source>/<user_id>/**/<file>``; a user folder's
name is the user id.  Decisions it encodes:

- Regular files only: symlinks (to files or folders) inside a user's folder are never followed, dotfiles and
  dot-folders are skipped, and so are the manifest and its side files if they sit under the source.
- What cannot be uploaded is never silent: a user folder that is a symlink, a folder not named by a user id,
  a file directly under the source root, a sub-folder that cannot be read, a user with no token are each a
  :class:`SourceProblem`, counted as failed (the run exits 1), logged as a warning and kept in the manifest
  (``scope_failures``) for ``syncer status``.  Their names may be patients' names: logs and status say
  "folder #3 of the source root" (the non-hidden entries of the root in name order, from 1) and a short
  hash of the name; the name itself goes only into the 0600 manifest's audit trail.
- A file whose size and mtime match a ``done`` row is up to date without being read.
- A ``permanent`` row (400/413) is held until its file changes.
- A row whose last POST may have been stored (``uploading``, or ``failed`` after an intent) is
  reconciled before anything is sent for it, even when its file has gone since.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.errors import ItemError
from syncer.inputs.tokens import valid_user_id
from syncer.local.storage import iter_regular_files, sha256_file
from syncer.manifest import Manifest
from syncer.models import PushState
from syncer.push.options import PushOptions
from syncer.redact import name_id

log = logging.getLogger("syncer.push")



def item_id(rel_path: str) -> str:
    """A short, stable id for a file in logs, where its name (patient data) must not appear."""
    return name_id(rel_path)


# -- planning ---------------------------------------------------------------------------------------

@dataclass
class PushItem:
    user_id: str
    rel_path: str                 # POSIX, relative to the user's folder
    path: Path
    size: int                     # at scan time (the row's size for a vanished file)
    mtime_ns: int
    row: dict[str, Any] | None    # the manifest row when planned
    reconcile: bool = False       # an earlier POST may have stored it: look before sending
    missing: bool = False         # the local file is gone: only settle the earlier attempt

    @property
    def key(self) -> tuple[str, str]:
        return (self.user_id, self.rel_path)

    @property
    def name(self) -> str:
        return self.rel_path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SourceProblem:
    """Something under the source that is not uploaded.  ``label`` and ``message`` never hold a name."""

    scope: str                  # "source": an entry of the root; "user": a user; "folder": a sub-folder
    scope_id: str               # a short hash of the entry's name ("source"), "<user>/<hash>" ("folder"), the user id
    reason: str                 # symlink_folder | not_a_user_id | file_in_root | unreadable | no_folder | no_token
    message: str                # for logs, status and the dry run
    name: str = field(default="", repr=False)  # the real name or relative path: the 0600 manifest only
    files: int = 1              # the items it stands for in the run's counts


def source_entry_problem(number: int, name: str, kind: str, reason: str) -> SourceProblem:
    """A problem with entry ``number`` (from 1, in name order) of the source root, named without its name."""
    ref = item_id(name)
    label = f"{kind} #{number} of the source root (id {ref})"
    what = {
        "symlink_folder": "is a symbolic link: not followed, nothing in it is uploaded (move the real folder here)",
        "not_a_user_id": "is not named by a user id (letters, digits, '-' or '_'): nothing in it is uploaded",
        "file_in_root": "is not inside a user folder (<source>/<user_id>/...): not uploaded",
    }[reason]
    return SourceProblem("source", ref, reason, f"{label} {what}", name)


@dataclass
class UserPlan:
    user_id: str
    items: list[PushItem] = field(default_factory=list)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    up_to_date: int = 0
    held_permanent: int = 0       # failed for good before and unchanged since: not re-sent, still red
    held_reasons: dict[str, int] = field(default_factory=dict)  # error class -> count, of the red ones
    held_acked: int = 0           # of those, acknowledged by an operator (syncer ack push): not red
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (symlink, hidden, ...)
    unsendable: int = 0           # names that are not valid UTF-8 cannot be sent or recorded
    problems: list[SourceProblem] = field(default_factory=list)  # sub-folders that could not be read

    @property
    def todo_bytes(self) -> int:
        return sum(i.size for i in self.items if not i.missing)


def plan_user(user_id: str, folder: Path, rows: dict[str, dict[str, Any]], *,
              exclude: frozenset[str] = frozenset()) -> UserPlan:
    """Compare one user's folder with its manifest rows.  Blocking (walks the folder): run in a thread.

    New file → a pending row and an item.  Unchanged (size and mtime) and done → up to date, not even
    hashed.  Unchanged and permanent → held.  Changed, pending or failed → an item (the uploader hashes
    it; a done file whose sha256 is the same is only touched).  A row whose last POST may have been
    stored (``uploading``, or ``failed`` after an intent) → an item that reconciles first, even when the
    local file has gone.
    """
    plan = UserPlan(user_id)
    root = Path(os.path.realpath(folder))

    def on_skip(path: Path, reason: str) -> None:
        reason, _, why = reason.partition(":")
        if reason == "unreadable":  # its files are unknown, so not uploaded: a failure, not a skip
            rel = _rel(path, root)
            ref = item_id(rel)
            plan.problems.append(SourceProblem(
                "folder", f"{user_id}/{ref}", "unreadable",
                f"user {user_id}: a sub-folder (id {ref}) cannot be read ({why.strip()}): nothing in it is uploaded",
                rel))
            return
        plan.skipped[reason] = plan.skipped.get(reason, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("user %s: skipped %s (%s)", user_id, _rel(path, root), reason)

    seen: set[str] = set()
    for path, st in iter_regular_files(root, on_skip):
        if str(path) in exclude:
            continue
        rel = _rel(path, root)
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            plan.unsendable += 1
            log.debug("user %s: a file name is not valid UTF-8: %r", user_id, rel)
            continue
        seen.add(rel)
        row = rows.get(rel)
        item = PushItem(user_id, rel, path, st.st_size, st.st_mtime_ns, row)
        if row is None:
            plan.inserts.append({"user_id": user_id, "rel_path": rel, "size": st.st_size,
                                 "mtime_ns": st.st_mtime_ns, "sha256": None, "state": PushState.PENDING.value})
            plan.items.append(item)
            continue
        state = row["state"]
        item.reconcile = _may_be_stored(row)
        unchanged = row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns
        if unchanged and state == PushState.DONE:
            plan.up_to_date += 1
        elif unchanged and state == PushState.PERMANENT:
            plan.held_permanent += 1
            if row.get("acked_at"):
                plan.held_acked += 1
            else:
                reason = row.get("error_class") or "permanent"
                plan.held_reasons[reason] = plan.held_reasons.get(reason, 0) + 1
        else:
            plan.items.append(item)
    for rel, row in rows.items():
        if rel not in seen and _may_be_stored(row):
            plan.items.append(PushItem(user_id, rel, root / rel, row["size"] or 0, row["mtime_ns"] or 0, row,
                                       reconcile=True, missing=True))
    # Settle earlier attempts first: their documents are then claimed before anything new is sent.
    plan.items.sort(key=lambda i: not i.reconcile)
    return plan


def _may_be_stored(row: dict[str, Any]) -> bool:
    return row["state"] in (PushState.UPLOADING, PushState.FAILED) and row.get("intent_at") is not None


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def user_folders(source: Path, users: tuple[str, ...], *, exclude: frozenset[str] = frozenset()
                 ) -> tuple[list[tuple[str, Path]], list[SourceProblem]]:
    """``([(user_id, folder)], [problems])``: the user folders under ``source`` in name order (only
    ``users`` when given), and the entries of the root (or requested users) that cannot be uploaded.

    Hidden entries and the manifest's own files (``exclude``) are not anyone's and not a problem; every
    other entry of the root is a user's folder or a problem, whatever ``users`` asks for."""
    problems: list[SourceProblem] = []
    found: dict[str, Path] = {}
    with os.scandir(source) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for number, entry in enumerate(entries, 1):
        if entry.is_symlink():
            if os.path.realpath(entry.path) not in exclude:
                problems.append(source_entry_problem(number, entry.name, "entry", "symlink_folder"))
        elif not entry.is_dir(follow_symlinks=False):
            if os.path.realpath(entry.path) not in exclude:
                problems.append(source_entry_problem(number, entry.name, "file", "file_in_root"))
        elif not valid_user_id(entry.name):
            problems.append(source_entry_problem(number, entry.name, "folder", "not_a_user_id"))
        else:
            found[entry.name] = Path(entry.path)
    if not users:
        return list(found.items()), problems
    out = []
    for user in users:
        if user in found:
            out.append((user, found[user]))
        else:
            problems.append(SourceProblem("user", user, "no_folder", f"user {user}: no folder {source / user}"))
    return out, problems


def no_token_problem(user: str, files: int) -> SourceProblem:
    return SourceProblem("user", user, "no_token", f"user {user} has no token in the tokens file: its {files}"
                         " files to upload are not uploaded", files=files)


def unreadable_user_problem(user: str, exc: OSError) -> SourceProblem:
    return SourceProblem("user", user, "unreadable", f"user {user}: the folder cannot be read"
                         f" ({exc.strerror or exc}): nothing in it is uploaded")


@dataclass
class DryRunUser:
    user_id: str
    files: int
    bytes: int
    note: str = ""


def plan_dry(opts: PushOptions, manifest_path: Path) -> tuple[list[DryRunUser], list[SourceProblem]]:
    """What a push would upload, per user, against the manifest opened read only (never written).
    Blocking; sends nothing.  Returns the per-user rows and the problems a real run would count as failed."""
    folders, problems = user_folders(opts.source, opts.users, exclude=opts.exclude)
    manifest = Manifest.open(manifest_path, readonly=True) if Path(manifest_path).exists() else None
    report = []
    try:
        for user, folder in folders:
            rows = manifest.push_rows_for_user(user) if manifest is not None else {}
            try:
                plan = plan_user(user, folder, rows, exclude=opts.exclude)
            except OSError as exc:
                problems.append(unreadable_user_problem(user, exc))
                continue
            problems.extend(plan.problems)
            if user not in opts.tokens:
                problems.append(no_token_problem(user, len(plan.items)))
                report.append(DryRunUser(user, 0, 0, f"no token: {len(plan.items)} files would not be uploaded"))
                continue
            uploads = [i for i in plan.items if not i.missing]
            report.append(DryRunUser(user, len(uploads), plan.todo_bytes,
                                     f"{plan.up_to_date} up to date" if plan.up_to_date else ""))
    finally:
        if manifest is not None:
            manifest.close()
    return report, problems


# -- the file as it is sent -------------------------------------------------------------------------

@dataclass
class Snapshot:
    """What was hashed: the upload is valid only while the file still looks like this."""

    size: int
    mtime_ns: int
    sha256: str
    ident: tuple[int, ...]


def file_ident(st: os.stat_result) -> tuple[int, ...]:
    """What tells a file apart from a changed or replaced one: size, mtime, ctime, inode, device."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def take_snapshot(path: Path, row: dict[str, Any]) -> Snapshot:
    """The file about to be sent: its size, mtime and sha256 (reused from the row when the file has not
    changed since its intent was recorded).  ItemError when it is gone, unreadable, no longer a
    regular file, or changed while being hashed.  Blocking: run it in a thread."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ItemError("it is no longer a regular file (a symlink or a folder now?)")
        if (row.get("size"), row.get("mtime_ns")) == (st.st_size, st.st_mtime_ns) and row.get("sha256") \
                and row.get("state") != PushState.DONE:
            return Snapshot(st.st_size, st.st_mtime_ns, row["sha256"], file_ident(st))  # hashed at its intent
        size, digest = sha256_file(path)
        after = os.lstat(path)
    except FileNotFoundError:
        raise ItemError("the file disappeared before it was uploaded") from None
    except ItemError:
        raise
    except OSError as exc:
        raise ItemError(f"cannot read the file: {exc.strerror or exc}") from None
    if file_ident(after) != file_ident(st) or size != st.st_size:
        raise ItemError("the file changed while it was being read; it will be uploaded next run")
    return Snapshot(size, st.st_mtime_ns, digest, file_ident(st))
