"""The manifest's tables and their migrations.

``PRAGMA user_version`` holds the schema version; ``MIGRATIONS[n]`` upgrades version n to n+1, one
transaction a step (``Manifest`` runs them).  A migration gets the plain ``sqlite3`` connection (all it
needs is ``execute``), so neither a first run nor an upgrade imports sqlite-utils (~25 ms of a run's
start-up).  One that wants sqlite-utils' table tools (``transform()``) wraps the connection itself with
:func:`utils_db`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

# What a migration is given: the connection (sqlite_utils.Database has the same ``execute`` too).
Db = sqlite3.Connection

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



def _schema_v1(db: Db) -> None:
    # The tables in the very text sqlite-utils 4 wrote for them before (``db[t].create(...)``): a new
    # manifest is the same file as before, without paying ~25 ms to import sqlite-utils on a first run.
    db.execute("""CREATE TABLE "runs" (
   "id" TEXT PRIMARY KEY,
   "kind" TEXT,
   "started" TEXT,
   "ended" TEXT,
   "outcome" TEXT,
   "pid" INTEGER,
   "host" TEXT,
   "files_done" INTEGER,
   "bytes_done" INTEGER,
   "failed" INTEGER,
   "skipped" INTEGER,
   "details" TEXT
)""")
    db.execute("""CREATE TABLE "pull_items" (
   "target_type" TEXT,
   "target_id" TEXT,
   "file_id" TEXT,
   "category" TEXT,
   "remote_name" TEXT,
   "size" INTEGER,
   "created" INTEGER,
   "modified" INTEGER,
   "ext" TEXT,
   "owner_id" TEXT,
   "local_path" TEXT NOT NULL,
   "path_key" TEXT,
   "state" TEXT NOT NULL,
   "attempts" INTEGER DEFAULT 0,
   "last_error" TEXT,
   "error_class" TEXT,
   "sha256" TEXT,
   "bytes" INTEGER,
   "first_seen" TEXT,
   "updated_at" TEXT,
   "done_at" TEXT,
   "run_id" TEXT,
   PRIMARY KEY ("target_type", "target_id", "file_id")
)""")
    # "What is left" reads only the rows left: a partial index over the unfinished states.
    db.execute("CREATE INDEX pull_todo ON pull_items(state) WHERE state IN ('pending', 'failed')")
    # Two remote files never share a local path (compared case-insensitively, see storage.casefold_key).
    db.execute("CREATE UNIQUE INDEX pull_path ON pull_items(path_key)")
    db.execute("""CREATE TABLE "push_items" (
   "user_id" TEXT,
   "rel_path" TEXT,
   "size" INTEGER,
   "mtime_ns" INTEGER,
   "sha256" TEXT,
   "state" TEXT NOT NULL,
   "remote_id" TEXT,
   "remote_name" TEXT,
   "attempts" INTEGER DEFAULT 0,
   "last_error" TEXT,
   "error_class" TEXT,
   "intent_at" REAL,
   "uploaded_at" TEXT,
   "updated_at" TEXT,
   "run_id" TEXT,
   PRIMARY KEY ("user_id", "rel_path")
)""")
    db.execute("CREATE INDEX push_todo ON push_items(state) WHERE state != 'done'")
    # Every upload ever made (a changed file is uploaded again; both documents are kept here).
    db.execute("""CREATE TABLE "push_uploads" (
   "id" INTEGER PRIMARY KEY,
   "user_id" TEXT,
   "rel_path" TEXT,
   "sha256" TEXT,
   "size" INTEGER,
   "remote_id" TEXT,
   "uploaded_at" TEXT,
   "run_id" TEXT,
   "adopted" INTEGER
)""")
    db.execute("CREATE UNIQUE INDEX push_uploads_remote ON push_uploads(remote_id)")
    db.execute("""CREATE TABLE "events" (
   "id" INTEGER PRIMARY KEY,
   "at" TEXT,
   "run_id" TEXT,
   "kind" TEXT,
   "item" TEXT,
   "event" TEXT,
   "error_class" TEXT,
   "detail" TEXT
)""")
    db.execute("CREATE INDEX events_run ON events(run_id)")


def _schema_v2(db: Db) -> None:
    """v1 -> v2: covering indexes for the counts and bytes by state (``syncer status``), which then read
    a narrow index instead of every row (5x faster on a million files).  Idempotent."""
    db.execute("CREATE INDEX IF NOT EXISTS pull_state_size ON pull_items(state, size)")
    db.execute("CREATE INDEX IF NOT EXISTS push_state_size ON push_items(state, size)")



def _schema_v3(db: Db) -> None:
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


def _schema_v4(db: Db) -> None:
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


def _schema_v5(db: Db) -> None:
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


MIGRATIONS: dict[int, Callable[[Db], None]] = {
    0: _schema_v1, 1: _schema_v2, 2: _schema_v3, 3: _schema_v4, 4: _schema_v5,
}


def utils_db(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """sqlite-utils on ``conn``, imported only now.  No plugins: nothing but syncer touches the connection
    to the patients' manifest (and loading them scans every installed package: ~20 ms)."""
    import sqlite_utils

    return sqlite_utils.Database(conn, execute_plugins=False)
