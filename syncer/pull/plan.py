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
- Encryption at rest (``encrypt``): a new file's path is its safe name cut 4 bytes shorter plus
  ``.age``; a plain file fetched again (changed remotely) or converted (``reencrypt``) moves to
  ``<its name>.age`` (the path key follows), and the plain file is removed only once the encrypted
  one is recorded (``prior_path`` remembers it meanwhile).  With encryption off (``--allow-plain``) an
  encrypted file fetched again moves back to its name without ``.age``.  An encrypted file left
  complete but unrecorded by a kill is fetched again, not adopted: its plaintext digest cannot be
  checked without a key.
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
AGE_SUFFIX = ".age"  # syncer.crypto.AGE_SUFFIX; repeated so planning never imports the crypto package
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
    encrypted: bool = False     # store it as an age file (local_path ends in .age)
    replaces: str | None = None  # a file stored otherwise (plain) to remove once this one is recorded
    convert: bool = False       # reencrypt: encrypt the local plain file at `replaces` (download if it fails)
    sha256: str | None = None   # for convert: the plaintext digest the local file must have

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
    cleanup: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)  # (key, old path to remove)
    up_to_date: int = 0
    listed: int = 0

    @property
    def todo_bytes(self) -> int:
        return sum(w.size or 0 for w in self.todo)


def folder_for(target: Target, category: str | None) -> str:
    return "/".join((target.type, safe_name(target.id), safe_name(category or UNCATEGORIZED)))


def path_choices(target: Target, f: RemoteFile, encrypt: bool = False) -> tuple[str, str, str]:
    """The local paths (relative to dest) a new file may get, in order of preference: its safe name,
    then with a suffix from its id, then with a suffix from its id twice (``encrypt``: each 4 bytes
    shorter, plus ``.age``, so the name still fits 255 bytes)."""
    folder = folder_for(target, f.category)
    if encrypt:
        name = safe_name(f.name, file_id=f.id, ext=f.ext, reserve=len(AGE_SUFFIX))
        return (f"{folder}/{name}{AGE_SUFFIX}", f"{folder}/{disambiguate(name, f.id, len(AGE_SUFFIX))}{AGE_SUFFIX}",
                f"{folder}/{disambiguate(name, f.id + f.id, len(AGE_SUFFIX))}{AGE_SUFFIX}")
    name = safe_name(f.name, file_id=f.id, ext=f.ext)
    return (f"{folder}/{name}", f"{folder}/{disambiguate(name, f.id)}",
            f"{folder}/{disambiguate(name, f.id + f.id)}")


def moved_choices(local_path: str, file_id: str, encrypt: bool) -> tuple[str, str, str]:
    """Where a file stored the other way goes: ``<name>.age`` (or its name without ``.age``), then
    with a suffix from its id, as for new files."""
    folder, _, name = local_path.rpartition("/")
    if encrypt:
        base = safe_name(name, reserve=len(AGE_SUFFIX))  # a 255-byte name is cut to leave room for .age
        return (f"{folder}/{base}{AGE_SUFFIX}", f"{folder}/{disambiguate(base, file_id, len(AGE_SUFFIX))}{AGE_SUFFIX}",
                f"{folder}/{disambiguate(base, file_id + file_id, len(AGE_SUFFIX))}{AGE_SUFFIX}")
    base = name[: -len(AGE_SUFFIX)] if name.endswith(AGE_SUFFIX) else name
    return (f"{folder}/{base}", f"{folder}/{disambiguate(base, file_id)}",
            f"{folder}/{disambiguate(base, file_id + file_id)}")


def _moving(row: dict[str, Any], encrypt: bool) -> bool:
    return bool(row.get("encrypted")) != encrypt


def candidate_keys(target: Target, listing: list[RemoteFile], rows: list[dict[str, Any]],
                   encrypt: bool = False, reencrypt: bool = False) -> list[str]:
    """The path keys the files of ``listing`` that ``rows`` do not know yet may take: look them up in
    the whole manifest (``Manifest.pull_paths_taken``) and pass the answer to :func:`plan_target` as
    ``taken_elsewhere``.  Two targets can share a folder (ids that sanitise, case-fold or normalise
    alike: ``a:b`` and ``a_b``, ``AbC`` and ``abc``), so a target's own rows are not enough."""
    known = {r["file_id"] for r in rows}
    keys = {casefold_key(p) for f in listing if f.id not in known for p in path_choices(target, f, encrypt)}
    # Files that may move between plain and encrypted storage in this run need a free path too.
    # (Finished files only with --reencrypt: a plain backup with encryption newly on would otherwise
    # compute three names per file on every run.)
    keys.update(casefold_key(p) for r in rows
                if _moving(r, encrypt) and (reencrypt or r["state"] in _TODO_STATES)
                for p in moved_choices(r["local_path"], r["file_id"], encrypt))
    return list(keys)


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
    encrypt: bool = False,
    reencrypt: bool = False,
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
    keys = candidate_keys(target, listing, rows, encrypt, reencrypt)
    # A rerun with nothing new has no candidate paths: no need to ask the manifest.
    elsewhere = manifest.pull_paths_taken(keys) if keys else set()
    plan = plan_target(target, listing, rows, dest=dest, categories=categories,
                       listing_complete=listing_complete, taken_elsewhere=elsewhere, include_shared=include_shared,
                       presence=presence, encrypt=encrypt, reencrypt=reencrypt)
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
    encrypt: bool = False,
    reencrypt: bool = False,
) -> TargetPlan:
    """Compare one target's listing with its manifest rows (see the module docstring).

    ``taken_elsewhere``: path keys held by other targets' rows (see :func:`candidate_keys`).
    ``encrypt``: files fetched now are stored as age files; ``reencrypt``: plain finished files are
    converted too.
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
        _plan_known(plan, target, f, row, presence, check_local, own=not include_shared, encrypt=encrypt,
                    reencrypt=reencrypt, taken=taken)

    # First seen, first served: the oldest file keeps the plain name in a collision.
    new_files.sort(key=lambda f: (f.created or 0, f.id))
    for f in new_files:
        rel = _free_path(path_choices(target, f, encrypt), f.id, taken)
        key = casefold_key(rel)
        taken.add(key)
        plan.inserts.append({
            "target_type": target.type, "target_id": target.id, "file_id": f.id,
            "category": f.category, "remote_name": f.name, "size": f.size, "created": f.created,
            "modified": f.modified, "ext": f.ext, "owner_id": f.owner_id, "local_path": rel,
            "path_key": key, "state": PullState.PENDING.value,
            # Seen in a listing of the target's own files: a later such listing covers it.
            "listed_own": None if include_shared else 1,
            "encrypted": int(encrypt),
        })
        plan.todo.append(WorkItem(target, f.id, f.size, rel, f.fullpath, name=f.name, replace=False,
                                  encrypted=encrypt))

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


def _free_path(choices: tuple[str, ...], file_id: str, taken: set[str]) -> str:
    """The first of ``choices`` not taken; if every one is (never seen), count until a name is free."""
    rel = next((c for c in choices if casefold_key(c) not in taken), None)
    n = 2
    while rel is None:
        folder, _, name = choices[0].rpartition("/")
        candidate = f"{folder}/{disambiguate(name, f'{file_id}#{n}')}"
        rel = candidate if casefold_key(candidate) not in taken else None
        n += 1
    return rel


def _plan_known(plan: TargetPlan, target: Target, f: RemoteFile, row: dict[str, Any], presence: Presence,
                check_local: bool, *, own: bool = False, encrypt: bool = False, reencrypt: bool = False,
                taken: set[str] | None = None) -> None:
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
    stored_encrypted = bool(row.get("encrypted"))
    if state == PullState.DONE and check_local:
        size = presence.size(row["local_path"])
        on_disk = row.get("stored_size") if stored_encrypted else row["size"]
        missing = size is None or (on_disk is not None and size != on_disk)
        if missing:
            changes.update(state=PullState.PENDING.value)
            event = "local_missing"
            state = PullState.PENDING.value
    if state in _TODO_STATES and check_local and "size" not in changes and not stored_encrypted:
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
    todo = state in _TODO_STATES
    prior = row.get("prior_path")
    if prior and state == PullState.DONE:
        plan.cleanup.append((key, prior))  # killed between recording the new file and removing the old
    convert = (not todo and encrypt and reencrypt and not stored_encrypted and state == PullState.DONE
               and row["sha256"] is not None)
    # Only a path this row once completed holds our bytes: anything else there is not ours to replace.
    item = WorkItem(target, f.id, f.size if f.size is not None else row["size"], row["local_path"], f.fullpath,
                    acked=acked, name=f.name, replace=bool(row.get("sha256")), encrypted=stored_encrypted,
                    replaces=prior if todo else None)
    if (todo and stored_encrypted != encrypt) or convert:
        # Stored the other way: it moves to <name>.age (or back); the old file goes once this one is
        # recorded, and prior_path (recorded with the move) remembers it should a kill come between.
        taken = taken if taken is not None else set()
        new = _free_path(moved_choices(row["local_path"], f.id, encrypt), f.id, taken)
        taken.add(casefold_key(new))
        changes.update(local_path=new, path_key=casefold_key(new), encrypted=int(encrypt),
                       prior_path=prior or row["local_path"])
        if convert:
            changes.update(state=PullState.PENDING.value)  # done again once converted (or downloaded)
        item = WorkItem(target, f.id, item.size, new, f.fullpath, acked=acked, name=f.name, replace=False,
                        encrypted=encrypt, replaces=prior or row["local_path"], convert=convert,
                        sha256=row["sha256"] if convert else None)
        todo = True
    if changes:
        plan.updates.append(Update("pull_items", key, changes, event=event))
    if todo:
        plan.todo.append(item)
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
