"""The restore's SQL: reading a backup's rows, and the ``restore_items`` table (schema v4).

Plain functions over a :class:`~syncer.manifest.store.Manifest`; call them on its own thread
(``manifest.call(fn, manifest, ...)``).  Outcomes during a run go through the Recorder as ``Update``s
of ``restore_items`` like any other table; only the rows a plan inserts are written here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncer.manifest.store import Manifest

from syncer.manifest.schema import ENCRYPTION_SCHEMA
from syncer.manifest.store import now_iso

MAPPING_COLUMNS = ("source_target", "source_file_id", "dest_user_id", "dest_file_id", "category", "name", "size",
                   "sha256", "restored_at", "sent_name")


def has_restore_table(manifest: Manifest) -> bool:
    return manifest.conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'restore_items'").fetchone() is not None


def backup_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """Every file a backup's manifest knows (any state; the plan decides what can be restored)."""
    # A manifest from before encryption has no such column (the version rule every reader uses).
    encrypted = ", encrypted" if manifest.version >= ENCRYPTION_SCHEMA else ""
    cur = manifest.conn.execute(
        "SELECT target_type, target_id, file_id, category, remote_name, size, sha256, local_path, state, owner_id"
        f"{encrypted} FROM pull_items ORDER BY target_type, target_id, created, file_id")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur]


def restore_rows_for_user(manifest: Manifest, dest_user_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(source_target, source_file_id): row}`` of what was (or is being) restored into one user."""
    if not has_restore_table(manifest):
        return {}
    cur = manifest.conn.execute(
        "SELECT source_target, source_file_id, state, dest_file_id, sha256, size, sent_name, intent_at, attempts,"
        " error_class FROM restore_items WHERE dest_user_id = ?", (dest_user_id,))
    cols = [d[0] for d in cur.description]
    return {(r[0], r[1]): dict(zip(cols, r, strict=True)) for r in cur}


def restore_claimed(manifest: Manifest, dest_user_id: str) -> set[str]:
    """Documents of a user that some restored file already owns."""
    if not has_restore_table(manifest):
        return set()
    return {r[0] for r in manifest.conn.execute(
        "SELECT dest_file_id FROM restore_items WHERE dest_user_id = ? AND dest_file_id IS NOT NULL",
        (dest_user_id,))}


def upsert_restore_items(manifest: Manifest, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Insert planned rows as ``pending``; a row seen before (its restored copy has gone since) starts
    over as ``pending`` (its old mapping is kept in the events)."""
    at = now_iso()
    cols = ("source_target", "source_file_id", "dest_user_id", "dest_account", "category", "name", "sent_name",
            "size", "sha256", "link_pull", "state", "updated_at", "run_id")
    values = [tuple(r.get(c) for c in cols[:-3]) + ("pending", at, run_id) for r in rows]
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols[3:]) + \
        ", dest_file_id = NULL, intent_at = NULL, last_error = NULL, error_class = NULL, restored_at = NULL"
    with manifest._tx():
        manifest.conn.executemany(
            f"INSERT INTO restore_items ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            f" ON CONFLICT (source_target, source_file_id, dest_user_id) DO UPDATE SET {sets}", values)


def mapping(manifest: Manifest, *, limit: int = -1) -> list[dict[str, Any]]:
    """Every restored pair (state done), oldest first: the ``--mapping-out`` rows."""
    if not has_restore_table(manifest):
        return []
    cur = manifest.conn.execute(
        f"SELECT {', '.join(MAPPING_COLUMNS)} FROM restore_items WHERE state = 'done'"
        " ORDER BY restored_at, source_target, source_file_id LIMIT ?", (limit,))
    return [dict(zip(MAPPING_COLUMNS, r, strict=True)) for r in cur]


def restore_summary(manifest: Manifest, *, failures: int = 50) -> dict[str, Any] | None:
    """Counts by state, the failed rows and the mapping, for ``syncer status``; None before schema v4."""
    if not has_restore_table(manifest):
        return None
    states = {r[0]: {"count": r[1], "bytes": r[2] or 0} for r in manifest.conn.execute(
        "SELECT state, count(*), sum(size) FROM restore_items GROUP BY state")}
    cur = manifest.conn.execute(
        "SELECT source_target, source_file_id, dest_user_id, state, attempts, error_class, last_error, updated_at"
        " FROM restore_items WHERE state IN ('failed', 'permanent', 'uploading') ORDER BY updated_at DESC LIMIT ?",
        (failures,))
    cols = [d[0] for d in cur.description]
    return {"states": states, "failed": [dict(zip(cols, r, strict=True)) for r in cur],
            "mapping": mapping(manifest)}


def restore_links(manifest: Manifest, target_type: str, target_id: str) -> dict[str, str]:
    """``{new file id: backed-up file id}`` for a target's documents a same-account restore put back
    (``link_pull``): the pull adopts its existing copy for the new id instead of fetching it."""
    if target_type != "user" or not has_restore_table(manifest):
        return {}
    return {r[0]: r[1] for r in manifest.conn.execute(
        "SELECT dest_file_id, source_file_id FROM restore_items WHERE link_pull = 1 AND state = 'done'"
        " AND source_target = ? AND dest_user_id = ? AND dest_file_id IS NOT NULL",
        (f"user:{target_id}", target_id))}


def relink_pull_rows(manifest: Manifest, run_id: str, target_type: str, target_id: str,
                     pairs: list[tuple[str, str]]) -> None:
    """Move backed-up rows from their old file id to the restored document's new id (one copy per
    document in the backup; the old id stays in ``restore_items`` and the events)."""
    at = now_iso()
    with manifest._tx():
        for old_id, new_id in pairs:
            manifest.conn.execute(
                "UPDATE pull_items SET file_id = ?, updated_at = ?, run_id = ?"
                " WHERE target_type = ? AND target_id = ? AND file_id = ?",
                (new_id, at, run_id, target_type, target_id, old_id))
            manifest.conn.execute(
                "INSERT INTO events (at, run_id, kind, item, event, detail) VALUES (?, ?, 'pull', ?, 'relinked', ?)",
                (at, run_id, f"{target_type}/{target_id}/{new_id}", f"restored copy of {old_id}"))
