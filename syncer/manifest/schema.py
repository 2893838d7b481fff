"""The manifest's tables and their migrations.

``PRAGMA user_version`` holds the schema version; ``MIGRATIONS[n]`` upgrades version n to n+1, one
transaction a step (``Manifest`` runs them).  sqlite-utils is used here only: the hot path is plain SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = 5
# The first schema with the encryption columns (pull_items.encrypted, stored_*, prior_path).
ENCRYPTION_SCHEMA = 5
# The oldest schema a read-only reader (status, verify, dry runs) can use as it is, without upgrading:
# migrations since then only add indexes.  Raise it when a migration changes what readers query.
READABLE_FROM = 1
PULL_KEY = ("target_type", "target_id", "file_id")
PUSH_KEY = ("user_id", "rel_path")
RESTORE_KEY = ("source_target", "source_file_id", "dest_user_id")
TABLE_KEYS = {"pull_items": PULL_KEY, "push_items": PUSH_KEY, "restore_items": RESTORE_KEY}
INSERTABLE = frozenset({"push_uploads"})



def _schema_v1(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {"id": str, "kind": str, "started": str, "ended": str, "outcome": str, "pid": int, "host": str,
         "files_done": int, "bytes_done": int, "failed": int, "skipped": int, "details": str},
        pk="id",
    )
    db["pull_items"].create(
        {"target_type": str, "target_id": str, "file_id": str, "category": str, "remote_name": str,
         "size": int, "created": int, "modified": int, "ext": str, "owner_id": str,
         "local_path": str, "path_key": str, "state": str, "attempts": int, "last_error": str,
         "error_class": str, "sha256": str, "bytes": int, "first_seen": str, "updated_at": str,
         "done_at": str, "run_id": str},
        pk=PULL_KEY,
        not_null={"state", "local_path"},
        defaults={"attempts": 0},
    )
    # "What is left" reads only the rows left: a partial index over the unfinished states.
    db.execute("CREATE INDEX pull_todo ON pull_items(state) WHERE state IN ('pending', 'failed')")
    # Two remote files never share a local path (compared case-insensitively, see storage.casefold_key).
    db.execute("CREATE UNIQUE INDEX pull_path ON pull_items(path_key)")
    db["push_items"].create(
        {"user_id": str, "rel_path": str, "size": int, "mtime_ns": int, "sha256": str, "state": str,
         "remote_id": str, "remote_name": str, "attempts": int, "last_error": str, "error_class": str,
         "intent_at": float, "uploaded_at": str, "updated_at": str, "run_id": str},
        pk=PUSH_KEY,
        not_null={"state"},
        defaults={"attempts": 0},
    )
    db.execute("CREATE INDEX push_todo ON push_items(state) WHERE state != 'done'")
    # Every upload ever made (a changed file is uploaded again; both documents are kept here).
    db["push_uploads"].create(
        {"id": int, "user_id": str, "rel_path": str, "sha256": str, "size": int, "remote_id": str,
         "uploaded_at": str, "run_id": str, "adopted": int},
        pk="id",
    )
    db.execute("CREATE UNIQUE INDEX push_uploads_remote ON push_uploads(remote_id)")
    db["events"].create(
        {"id": int, "at": str, "run_id": str, "kind": str, "item": str, "event": str, "error_class": str,
         "detail": str},
        pk="id",
    )
    db.execute("CREATE INDEX events_run ON events(run_id)")


def _schema_v2(db: sqlite_utils.Database) -> None:
    """v1 -> v2: covering indexes for the counts and bytes by state (``syncer status``), which then read
    a narrow index instead of every row (5x faster on a million files).  Idempotent."""
    db.execute("CREATE INDEX IF NOT EXISTS pull_state_size ON pull_items(state, size)")
    db.execute("CREATE INDEX IF NOT EXISTS push_state_size ON push_items(state, size)")


# Failures of a whole scope (a pull target whose listing failed or listed nothing, a push user), one row
# per scope: written when seen, removed when a later run finds the scope sound again.
SCOPE_KEY = ("kind", "scope", "scope_id")


def _schema_v3(db: sqlite_utils.Database) -> None:
    """v2 -> v3: failures that stay visible.

    - ``scope_failures``: a target (or user) that could not be listed or listed nothing, with who
      acknowledged it, if anyone.
    - ``acked_by``/``acked_at``/``ack_reason`` on the item tables: an operator's acknowledgement of a
      permanent failure (``syncer ack``); cleared when the item changes or is done.
    - ``listed_own`` on ``pull_items``: 1 once the file was seen in a listing without ``include_shared``
      (it is the target's own file).  A later listing without ``include_shared`` proves the absence only
      of such files: a shared document it does not show is not deleted remotely, just not asked for.

    Readers of an older manifest see none of it (``Manifest.summary`` checks the version)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS scope_failures (kind TEXT NOT NULL, scope TEXT NOT NULL, scope_id TEXT NOT NULL,"
        " reason TEXT NOT NULL, error_class TEXT, detail TEXT, first_seen TEXT, last_seen TEXT, run_id TEXT,"
        " acked_by TEXT, acked_at TEXT, PRIMARY KEY (kind, scope, scope_id))")
    for table in ("pull_items", "push_items"):
        have = {c[1] for c in db.execute(f"PRAGMA table_info({table})").fetchall()}
        for col in ("acked_by", "acked_at", "ack_reason"):
            if col not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {col} TEXT")
    have = {c[1] for c in db.execute("PRAGMA table_info(pull_items)").fetchall()}
    if "listed_own" not in have:
        # No rows rewritten (ALTER ... ADD COLUMN is instant on a million rows): only a user's
        # user_documents can be someone else's, so the planner reads NULL as "own" for every other row.
        db.execute("ALTER TABLE pull_items ADD COLUMN listed_own INTEGER")


def _schema_v4(db: sqlite_utils.Database) -> None:
    """v3 -> v4: ``restore_items``, one row per backed-up file a restore puts into a destination user
    (``syncer restore``): the intent before its POST, the new document's id (the old id -> new id
    mapping), the name as sent when it had to be made sendable.  ``link_pull`` = 1 marks a same-account
    restore recorded in the backup's own manifest: the next pull moves the backed-up row to the new id
    instead of fetching the document again.  New readers check that the table exists (status on v3 or older)."""
    db.execute("""
        CREATE TABLE IF NOT EXISTS restore_items (
            source_target TEXT NOT NULL, source_file_id TEXT NOT NULL, dest_user_id TEXT NOT NULL,
            dest_account TEXT, category TEXT, name TEXT, sent_name TEXT, size INTEGER, sha256 TEXT,
            state TEXT NOT NULL, dest_file_id TEXT, intent_at REAL, attempts INTEGER DEFAULT 0,
            last_error TEXT, error_class TEXT, adopted INTEGER, link_pull INTEGER DEFAULT 0,
            restored_at TEXT, updated_at TEXT, run_id TEXT,
            PRIMARY KEY (source_target, source_file_id, dest_user_id))""")
    db.execute("CREATE INDEX IF NOT EXISTS restore_dest ON restore_items(dest_user_id, dest_file_id)")
    db.execute("CREATE INDEX IF NOT EXISTS restore_state ON restore_items(state)")


def _schema_v5(db: sqlite_utils.Database) -> None:
    """v4 -> v5: encryption at rest.  ``encrypted`` (0/1) says how the file at ``local_path`` is stored
    (an age file when 1; ``local_path`` is always the stored path, ``.age`` included); ``sha256`` and
    ``bytes`` stay those of the plaintext, ``stored_sha256``/``stored_size`` are those of the file on
    disk (what ``verify`` checks without a key); ``prior_path`` is the old path of a file moving between
    plain and encrypted storage, removed once the new file is recorded (kept here so a run killed in
    between still removes it).  Rows from before stay plain (0).  Readers check ``Manifest.version``
    against ENCRYPTION_SCHEMA before they query these columns, so READABLE_FROM stays where it is."""
    cols = {c[1] for c in db.execute("PRAGMA table_info(pull_items)").fetchall()}
    if "encrypted" not in cols:
        db.execute("ALTER TABLE pull_items ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0")
    for col, kind in (("stored_sha256", "TEXT"), ("stored_size", "INTEGER"), ("prior_path", "TEXT")):
        if col not in cols:
            db.execute(f"ALTER TABLE pull_items ADD COLUMN {col} {kind}")
    # `status` counts files stored plain and encrypted: from a narrow index, like the other counts.
    db.execute("CREATE INDEX IF NOT EXISTS pull_state_encrypted ON pull_items(state, encrypted)")


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    0: _schema_v1, 1: _schema_v2, 2: _schema_v3, 3: _schema_v4, 4: _schema_v5,
}
