"""Planning a pull: one target's listing against what the manifest knows.

Pure logic (plus a ``stat`` per finished file), no network and no writes: the result says which rows
to insert or change and which files to fetch.  Decisions it encodes:

- A file's local path is chosen once, when it is first seen, and recorded; it never changes after.
  Two files whose safe names collide in one folder (compared case-insensitively) are told apart by a
  short suffix derived from the file id; the file seen first (oldest ``created``, then id) keeps the
  plain name.
- A remote rename updates ``remote_name`` in the manifest; the local file keeps its path, so paths
  stay stable for whatever reads the backup.
- A file gone from the listing is marked ``remote_deleted`` and kept on disk: a backup never deletes.
  Only a listing that covers the file proves its absence: a narrower selection (fewer ``--category``,
  no ``--include-shared`` after a run with it) is not a deletion.
- A finished file whose size changed remotely, or whose local copy has disappeared, is fetched again.
- Every file not backed up is tried again, failed permanently or not: one request a run is cheap next
  to a patient's file that is never fetched once the server (or the operator) has fixed the cause.
  Only a file that is done, with its local copy present, counts as up to date.
- An operator's acknowledgement of a permanent failure is void once the remote file changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.local.names import casefold_key, disambiguate, safe_name
from syncer.local.storage import temp_name
from syncer.manifest import Manifest, Update
from syncer.manifest.restore_rows import relink_pull_rows, restore_links
from syncer.models import PullState, RemoteFile, Target
from syncer.store.local import LocalPresence

if TYPE_CHECKING:
    from syncer.store import Presence

UNCATEGORIZED = "uncategorized"
# Not backed up yet: fetched (again) by every run.
_TODO_STATES = (PullState.PENDING, PullState.FAILED, PullState.PERMANENT)


@dataclass
class WorkItem:
    """One file to fetch in this run.  ``fullpath`` lives in memory only."""

    target: Target
    file_id: str
    size: int | None
    local_path: str           # relative to dest
    fullpath: str | None
    maybe_partial: bool = True  # a partial temp may exist from an earlier run (worth a Range resume)
    tried: bool = False         # an attempt was made in this run (it may have left a partial)
    acked: bool = False         # an operator acknowledged its permanent failure (syncer ack)
    name: str = field(default="", repr=False)  # the remote name: only to take it out of a server's error text
    replace: bool = True        # False: never completed here, so an object sink must not replace a key

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target.type, self.target.id, self.file_id)


@dataclass
class TargetPlan:
    target: Target
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[Update] = field(default_factory=list)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)
    todo: list[WorkItem] = field(default_factory=list)
    up_to_date: int = 0
    listed: int = 0

    @property
    def todo_bytes(self) -> int:
        return sum(w.size or 0 for w in self.todo)


def folder_for(target: Target, category: str | None) -> str:
    return "/".join((target.type, safe_name(target.id), safe_name(category or UNCATEGORIZED)))


def path_choices(target: Target, f: RemoteFile) -> tuple[str, str, str]:
    """The local paths (relative to dest) a new file may get, in order of preference: its safe name,
    then with a suffix from its id, then with a suffix from its id twice."""
    folder = folder_for(target, f.category)
    name = safe_name(f.name, file_id=f.id, ext=f.ext)
    return (f"{folder}/{name}", f"{folder}/{disambiguate(name, f.id)}",
            f"{folder}/{disambiguate(name, f.id + f.id)}")


def candidate_keys(target: Target, listing: list[RemoteFile], rows: list[dict[str, Any]]) -> list[str]:
    """The path keys the files of ``listing`` that ``rows`` do not know yet may take: look them up in
    the whole manifest (``Manifest.pull_paths_taken``) and pass the answer to :func:`plan_target` as
    ``taken_elsewhere``.  Two targets can share a folder (ids that sanitise, case-fold or normalise
    alike: ``a:b`` and ``a_b``, ``AbC`` and ``abc``), so a target's own rows are not enough."""
    known = {r["file_id"] for r in rows}
    return list({casefold_key(p) for f in listing if f.id not in known for p in path_choices(target, f)})


def plan_and_record(
    manifest: Manifest,
    run_id: str | None,
    target: Target,
    listing: list[RemoteFile],
    *,
    dest: Path,
    categories: tuple[str, ...] = (),
    listing_complete: bool = True,
    include_shared: bool = False,
    presence: Presence | None = None,
) -> TargetPlan:
    """Plan one target against the whole manifest and record the plan, as one step on the manifest's
    own thread (call it through ``Manifest.call``).

    Being one step, no other target's plan can take a path between the check and the record: two
    targets that share a folder (see :func:`candidate_keys`) are planned one after the other.  It is
    also one thread hop per target rather than four, so the first target's files reach the
    downloaders without waiting behind every other target's queries.  ``run_id`` None: a dry run,
    which records nothing."""
    rows = _relink_restored(manifest, run_id, target, listing,
                            manifest.pull_rows_for_target(target.type, target.id))
    keys = candidate_keys(target, listing, rows)
    # A rerun with nothing new has no candidate paths: no need to ask the manifest.
    elsewhere = manifest.pull_paths_taken(keys) if keys else set()
    plan = plan_target(target, listing, rows, dest=dest, categories=categories,
                       listing_complete=listing_complete, taken_elsewhere=elsewhere, include_shared=include_shared,
                       presence=presence)
    if run_id is not None and (plan.inserts or plan.updates or plan.deleted):
        manifest.apply_pull_listing(run_id, plan.inserts, plan.updates, plan.deleted)
    return plan


def _relink_restored(manifest: Manifest, run_id: str | None, target: Target, listing: list[RemoteFile],
                     rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents a same-account ``syncer restore`` put back have new ids: move their rows to the new ids
    (recorded unless a dry run), so the backup keeps its one copy of each instead of fetching it again."""
    links = restore_links(manifest, target.type, target.id)
    if not links:
        return rows
    known = {r["file_id"] for r in rows}
    pairs = [(links[f.id], f.id) for f in listing if f.id in links and f.id not in known and links[f.id] in known]
    if not pairs:
        return rows
    if run_id is not None:
        relink_pull_rows(manifest, run_id, target.type, target.id, pairs)
    moved = dict(pairs)
    return [dict(r, file_id=moved[r["file_id"]]) if r["file_id"] in moved else r for r in rows]


def plan_target(
    target: Target,
    listing: list[RemoteFile],
    rows: list[dict[str, Any]],
    *,
    dest: Path,
    categories: tuple[str, ...] = (),
    check_local: bool = True,
    listing_complete: bool = True,
    taken_elsewhere: Iterable[str] = (),
    include_shared: bool = False,
    presence: Presence | None = None,
) -> TargetPlan:
    """Compare one target's listing with its manifest rows (see the module docstring).

    ``taken_elsewhere``: path keys held by other targets' rows (see :func:`candidate_keys`).
    ``presence``: what the sink holds (``syncer.store``); default: the folder ``dest``."""
    plan = TargetPlan(target, listed=len(listing))
    if presence is None:
        presence = LocalPresence(dest)
    known = {r["file_id"]: r for r in rows}
    taken = {r["path_key"] for r in rows} | set(taken_elsewhere)
    seen: set[str] = set()

    new_files: list[RemoteFile] = []
    for f in listing:
        if categories and f.category not in categories:
            continue
        if f.id in seen:          # the same id twice in one answer: keep the first
            continue
        seen.add(f.id)
        row = known.get(f.id)
        if row is None:
            new_files.append(f)
            continue
        _plan_known(plan, target, f, row, presence, check_local, own=not include_shared)

    # First seen, first served: the oldest file keeps the plain name in a collision.
    new_files.sort(key=lambda f: (f.created or 0, f.id))
    for f in new_files:
        choices = path_choices(target, f)
        rel = next((c for c in choices if casefold_key(c) not in taken), None)
        n = 2
        while rel is None:  # every suffix taken too (never seen): count until one is free
            folder, _, name = choices[0].rpartition("/")
            candidate = f"{folder}/{disambiguate(name, f'{f.id}#{n}')}"
            rel = candidate if casefold_key(candidate) not in taken else None
            n += 1
        key = casefold_key(rel)
        taken.add(key)
        plan.inserts.append({
            "target_type": target.type, "target_id": target.id, "file_id": f.id,
            "category": f.category, "remote_name": f.name, "size": f.size, "created": f.created,
            "modified": f.modified, "ext": f.ext, "owner_id": f.owner_id, "local_path": rel,
            "path_key": key, "state": PullState.PENDING.value,
            # Seen in a listing of the target's own files: a later such listing covers it.
            "listed_own": None if include_shared else 1,
        })
        plan.todo.append(WorkItem(target, f.id, f.size, rel, f.fullpath, name=f.name, replace=False))

    if not listing_complete:
        _mark_partials(plan.todo, presence)
        return plan  # some items could not be read: absence proves nothing
    for file_id, row in known.items():
        if file_id in seen or row["state"] == PullState.REMOTE_DELETED:
            continue
        if categories and row["category"] not in categories:
            continue  # not covered by this listing
        if not include_shared and not _own(target, row):
            continue  # maybe a document shared with the user: a listing without include_shared omits it
        plan.deleted.append((target.type, target.id, file_id))
    _mark_partials(plan.todo, presence)
    return plan


def _own(target: Target, row: dict[str, Any]) -> bool:
    """Whether a listing without include_shared covers this row: it was seen in one (``listed_own``), or
    it cannot be someone else's (only a user's user_documents can be shared with them)."""
    return bool(row.get("listed_own")) or not (target.type == "user" and row["category"] == "user_document")


_ACK_VOID = {"acked_by": None, "acked_at": None, "ack_reason": None}


def _plan_known(plan: TargetPlan, target: Target, f: RemoteFile, row: dict[str, Any], presence: Presence,
                check_local: bool, *, own: bool = False) -> None:
    key = (target.type, target.id, f.id)
    changes: dict[str, Any] = {}
    event = None
    if own and "listed_own" in row and not _own(target, row):
        changes["listed_own"] = 1  # once: now a listing of own files covers it
    if f.name != row["remote_name"]:
        changes["remote_name"] = f.name
        event = "renamed_remote"
    state = row["state"]
    if f.size is not None and row["size"] is not None and f.size != row["size"]:
        changes.update(size=f.size, state=PullState.PENDING.value, sha256=None)
        event = "changed_remote"
        state = PullState.PENDING.value
    elif state == PullState.REMOTE_DELETED:
        state = PullState.DONE.value if row["sha256"] else PullState.PENDING.value
        changes["state"] = state
        event = "reappeared"
    acked = bool(row.get("acked_at"))
    if acked and event in ("changed_remote", "reappeared"):
        changes.update(_ACK_VOID)  # acknowledged was the file as it was, not this one
        acked = False
    if state == PullState.DONE and check_local:
        size = presence.size(row["local_path"])
        missing = size is None or (row["size"] is not None and size != row["size"])
        if missing:
            changes.update(state=PullState.PENDING.value)
            event = "local_missing"
            state = PullState.PENDING.value
    if state in _TODO_STATES and check_local and "size" not in changes:
        # Killed after the rename but before the manifest heard of it: the final path only ever
        # holds a complete file written for this id, so adopt it instead of fetching it again.
        adopted = presence.adopt(row["local_path"], row["size"])
        if adopted is not None:
            changes.update(state=PullState.DONE.value, sha256=adopted, bytes=row["size"],
                           last_error=None, error_class=None)
            if acked:
                changes.update(_ACK_VOID)
            event = "adopted_local"
            state = PullState.DONE.value
    if changes:
        plan.updates.append(Update("pull_items", key, changes, event=event))
    if state in _TODO_STATES:
        # Only a path this row once completed holds our bytes: anything else there is not ours to replace.
        plan.todo.append(WorkItem(target, f.id, f.size if f.size is not None else row["size"],
                                  row["local_path"], f.fullpath, acked=acked, name=f.name,
                                  replace=bool(row.get("sha256"))))
    elif state == PullState.DONE:
        plan.up_to_date += 1


def _mark_partials(todo: list[WorkItem], presence: Presence) -> None:
    """Which files to fetch have a partial temp beside them (left by an interrupted run): one
    directory listing per folder instead of a stat per file in the download path."""
    partials: dict[str, set[str]] = {}
    for item in todo:
        folder, _, name = item.local_path.rpartition("/")
        if folder not in partials:
            partials[folder] = presence.partials(folder)
        item.maybe_partial = temp_name(name) in partials[folder]
