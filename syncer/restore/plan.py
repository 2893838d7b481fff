"""Planning a restore: which backed-up files go to which destination user, under which name.

Pure decisions over the backup's rows, a fresh listing of the destination user and this restore's own
rows; no I/O.  Decisions it encodes:

- Only files of **user** targets whose category an upload can carry (``UPLOADABLE``) are restorable;
  visit files (``intake_attachment``) cannot be uploaded into a visit through the API: they are
  counted as ``NOT_RESTORABLE``, not failed.  A row never fully downloaded (no sha256) has nothing to
  send.  A document a user target holds but another backed-up user owns (shared with it) is restored
  under its owner only, never twice.
- The name sent is the latest ``remote_name`` the backup knows.  Control characters (C0, DEL, C1: NUL,
  CR, LF, tab...) cannot travel in a multipart header as they are: each becomes ``_`` (an empty name
  becomes ``_``) and both names are recorded.  Quotes, backslashes and any other Unicode go as they are.
- **Same ids** (a user restored into itself in the same account): only files whose id is gone from the
  listing.  **Copy** (another account, or another user): every file, except ones already there.
- Already there: a row of ours whose document is still listed; else a listed document with the same
  name (NFC), size and category, not claimed by another file, becomes a *candidate* that the job
  adopts if its bytes hash to the file's sha256 (after a lost manifest, nothing is sent twice).
- A row whose last POST may have been stored (``uploading``, or ``failed`` after an intent) is
  reconciled first; a row refused for good (400/413) is held while the backed-up bytes are the same.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from syncer.models import RemoteFile

UPLOADABLE = ("user_document", "user_consent", "user_avatar")
NOT_RESTORABLE = "kept in the backup, not restorable through the Files API"
_BACKED_UP = ("done", "remote_deleted")


def sendable_name(name: str) -> str:
    """The name as it can be sent: each control character (C0, DEL, C1) replaced by ``_``."""
    out = "".join("_" if (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F) else c for c in name)
    return out or "_"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class BackupFile:
    """One backed-up file (a ``pull_items`` row of the backup)."""

    target_type: str
    target_id: str
    file_id: str
    category: str | None
    name: str
    size: int
    sha256: str | None
    local_path: str
    state: str
    owner_id: str | None = None
    encrypted: bool = False       # stored as an age file (its sha256 and size are the plaintext's)

    @property
    def source_target(self) -> str:
        return f"{self.target_type}:{self.target_id}"

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BackupFile:
        return cls(row["target_type"], row["target_id"], row["file_id"], row["category"], row["remote_name"] or "",
                   row["size"] or 0, row["sha256"], row["local_path"], row["state"], row.get("owner_id"),
                   bool(row.get("encrypted")))


@dataclass
class Selection:
    """The backup, sorted: the files of each user to consider, and what is left out and why."""

    by_user: dict[str, list[BackupFile]] = field(default_factory=dict)
    ids_by_user: dict[str, set[str]] = field(default_factory=dict)   # every backed-up id of a user target
    content: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # file id -> (sha256, size)
    not_restorable: int = 0          # visit files and categories an upload cannot carry
    not_restorable_bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)           # reason -> files
    unmapped: dict[str, int] = field(default_factory=dict)           # source user -> files (not in the map)


def select(rows: Iterable[dict[str, Any]], *, users: tuple[str, ...] = (), categories: tuple[str, ...] = (),
           dest_for: Any = None) -> Selection:
    """Sort the backup's rows: per source user, the files that may be restored.  ``dest_for(user)``
    gives a user's destination or None (not in the user map)."""
    sel = Selection()
    files = [BackupFile.from_row(r) for r in rows]
    backed_up_users = {f.target_id for f in files if f.target_type == "user"}
    for f in files:
        if f.target_type == "user":
            sel.ids_by_user.setdefault(f.target_id, set()).add(f.file_id)
            sel.content[f.file_id] = (f.sha256, f.size)
    wanted = set(users)
    for f in files:
        if f.target_type != "user" and wanted:
            continue  # only users were asked for
        if f.target_type == "user" and wanted and f.target_id not in wanted:
            continue
        if categories and f.category not in categories:
            continue
        if f.target_type != "user" or f.category not in UPLOADABLE:
            sel.not_restorable += 1
            sel.not_restorable_bytes += f.size
            continue
        if f.state not in _BACKED_UP or not f.sha256:
            sel.skipped["never fully backed up"] += 1
            continue
        if f.owner_id and f.owner_id != f.target_id and f.owner_id in backed_up_users:
            sel.skipped["shared by another backed-up user (restored under its owner)"] += 1
            continue
        if dest_for is not None and dest_for(f.target_id) is None:
            sel.unmapped[f.target_id] = sel.unmapped.get(f.target_id, 0) + 1
            continue
        sel.by_user.setdefault(f.target_id, []).append(f)
    return sel


def maybe_ours(sel: Selection, dest_user: str, rows: dict[tuple[str, str], dict[str, Any]]) -> set[str]:
    """Backed-up documents of ``dest_user`` (same account) that may be an interrupted upload of ours: a
    pull that ran between a killed restore and this run backs up that upload like any new document.
    They hold the bytes of a row whose POST may have been stored; reconciling it (hash-proven, created
    since its intent) may adopt them, so they are not claimed for that.  Look-alike adoption still
    never takes them."""
    pending = {(r["sha256"], r["size"]) for r in rows.values()
               if r["state"] in ("uploading", "failed") and r.get("intent_at")}
    if not pending:
        return set()
    return {fid for fid in sel.ids_by_user.get(dest_user, set()) if sel.content.get(fid) in pending}


@dataclass
class RestoreItem:
    source: BackupFile
    dest_user: str
    sent_name: str
    row: dict[str, Any] | None = None
    reconcile: bool = False                       # an earlier POST may have stored it: look first
    candidates: list[RemoteFile] = field(default_factory=list)  # listed look-alikes: adopt one if its bytes match

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source.source_target, self.source.file_id, self.dest_user)

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def category(self) -> str:
        return self.source.category or "user_document"


@dataclass
class UserPlan:
    source_user: str
    dest_user: str
    items: list[RestoreItem] = field(default_factory=list)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    present: int = 0          # same ids: still on the server, nothing to do
    restored: int = 0         # restored before and still there
    held_permanent: int = 0   # refused for good before (400/413) and unchanged: not sent again, still red
    held_reasons: dict[str, int] = field(default_factory=dict)  # error class -> count of those
    renamed: int = 0          # sent under a substitute name

    @property
    def todo_bytes(self) -> int:
        return sum(i.size for i in self.items)

    @property
    def adoptable(self) -> int:
        return sum(1 for i in self.items if i.candidates)


def plan_user(source_user: str, dest_user: str, files: list[BackupFile], listing: Iterable[RemoteFile],
              rows: dict[tuple[str, str], dict[str, Any]], *, same_ids: bool, claimed: set[str],
              dest_account: str = "", link_pull: bool = False) -> UserPlan:
    """Decide each of one source user's files against the destination user (see the module docstring).

    ``rows``: this restore's rows for the destination user, by (source_target, source_file_id).
    ``claimed``: listed documents that already belong to some file (never candidates)."""
    plan = UserPlan(source_user, dest_user)
    listed = list(listing)
    listed_ids = {f.id for f in listed}
    by_look: dict[tuple[str, int, str | None], list[RemoteFile]] = {}
    for f in sorted(listed, key=lambda f: (f.created or 0, f.id)):
        by_look.setdefault((_nfc(f.name), f.size or 0, f.category), []).append(f)
    for f in files:
        row = rows.get((f.source_target, f.file_id))
        state = row["state"] if row else None
        if state == "done" and row and row["dest_file_id"] in listed_ids:
            plan.restored += 1
            continue
        if same_ids and f.file_id in listed_ids:
            plan.present += 1
            continue
        if state == "permanent" and row and row["sha256"] == f.sha256:
            plan.held_permanent += 1
            reason = row.get("error_class") or "permanent"
            plan.held_reasons[reason] = plan.held_reasons.get(reason, 0) + 1
            continue
        sent = sendable_name(f.name)
        plan.renamed += sent != f.name
        item = RestoreItem(f, dest_user, sent, row)
        item.reconcile = state in ("uploading", "failed") and bool(row and row.get("intent_at"))
        item.candidates = [d for d in by_look.get((_nfc(sent), f.size, f.category), []) if d.id not in claimed]
        if row is None or state == "done":  # new, or restored before and gone again since
            plan.inserts.append({"source_target": f.source_target, "source_file_id": f.file_id,
                                 "dest_user_id": dest_user, "dest_account": dest_account, "category": f.category,
                                 "name": f.name, "sent_name": sent, "size": f.size, "sha256": f.sha256,
                                 "link_pull": int(link_pull)})
            item.row = None
        plan.items.append(item)
    # Settle earlier attempts first: their documents are then claimed before anything new is sent.
    plan.items.sort(key=lambda i: not i.reconcile)
    return plan
