"""What stays failed beyond one item's row: acknowledgements of permanent failures (``syncer ack``) and
failures of a whole scope (a pull target that could not be listed or listed nothing; for push, what
could not be uploaded under the source: an entry of its root, a folder, a user).

A mixin of :class:`syncer.manifest.store.Manifest` (it uses the connection, ``_tx`` and ``version`` of
the manifest); kept apart so the store stays about rows and runs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncer.errors import ManifestError
from syncer.redact import name_id


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FailureRecords:
    path: Path
    conn: sqlite3.Connection
    version: int

    def _tx(self) -> contextlib.AbstractContextManager[None]:  # provided by Manifest
        raise NotImplementedError

    # -- acknowledgements ----------------------------------------------------------------------
    def acknowledge_pull(self, target_type: str, target_id: str, file_ids: list[str] | None, *, by: str,
                         reason: str) -> list[str]:
        """Record that ``by`` acknowledged the permanent failure of these files of one target (every
        unacknowledged permanent one when ``file_ids`` is None), with an ``acknowledged`` event each.

        Raises ManifestError naming a file that is unknown or not failed permanently: only a failure the
        server says will not change can be accepted; anything else is retried and must stay red.
        Returns the file ids acknowledged."""
        if self.version < 3:
            raise ManifestError(f"{self.path} has an older schema ({self.version}); run any pull to upgrade it")
        rows = dict(self.conn.execute(
            "SELECT file_id, state FROM pull_items WHERE target_type = ? AND target_id = ?"
            + ("" if file_ids is not None else " AND state = 'permanent' AND acked_at IS NULL"),
            (target_type, target_id)).fetchall())
        if file_ids is None and not rows:
            self._known_scope("pull_items", "target_type = ? AND target_id = ?", (target_type, target_id),
                              f"{target_type}:{target_id}")
        wanted = list(dict.fromkeys(file_ids)) if file_ids is not None else sorted(rows)
        for fid in wanted:
            if fid not in rows:
                raise ManifestError(f"{target_type}:{target_id} has no file {fid!r} in the manifest")
            if rows[fid] != "permanent":
                raise ManifestError(f"{target_type}:{target_id}/{fid} is {rows[fid]}, not failed permanently:"
                                    " only a permanent failure can be acknowledged")
        self._record_acks("pull", "target_type = ? AND target_id = ? AND file_id = ?",
                          [((target_type, target_id, fid), f"{target_type}/{target_id}/{fid}") for fid in wanted],
                          by, reason)
        return wanted

    def acknowledge_push(self, user_id: str, rel_paths: list[str] | None, *, by: str, reason: str) -> list[str]:
        """The push twin of :meth:`acknowledge_pull`: files of one user's folder (every unacknowledged
        permanent one when ``rel_paths`` is None) that the server refused for good (400, 413).  The
        acknowledgement is void once the file changes (it is sent again) or is refused again."""
        if self.version < 3:
            raise ManifestError(f"{self.path} has an older schema ({self.version}); run any push to upgrade it")
        rows = dict(self.conn.execute(
            "SELECT rel_path, state FROM push_items WHERE user_id = ?"
            + ("" if rel_paths is not None else " AND state = 'permanent' AND acked_at IS NULL"),
            (user_id,)).fetchall())
        if rel_paths is None and not rows:
            self._known_scope("push_items", "user_id = ?", (user_id,), f"user {user_id}")
        if rel_paths is not None:  # a PATH, or the short id status shows for it (syncer.redact.name_id)
            by_id = {name_id(rel): rel for rel in rows}
            rel_paths = [rel if rel in rows else by_id.get(rel, rel) for rel in rel_paths]
        wanted = list(dict.fromkeys(rel_paths)) if rel_paths is not None else sorted(rows)
        for n, rel in enumerate(wanted, 1):
            # The relative path is a file name (patient data): the message says which argument it was.
            if rel not in rows:
                raise ManifestError(f"user {user_id}: file argument #{n} is not in the manifest")
            if rows[rel] != "permanent":
                raise ManifestError(f"user {user_id}: file argument #{n} is {rows[rel]}, not refused for good:"
                                    " only a permanent failure can be acknowledged")
        self._record_acks("push", "user_id = ? AND rel_path = ?",
                          [((user_id, rel), f"{user_id}/{rel}") for rel in wanted], by, reason)
        return wanted

    def _known_scope(self, table: str, where: str, args: tuple[str, ...], label: str) -> None:
        """``ack --all`` on a target or user the manifest has never seen is a mistyped id, not "nothing to
        acknowledge": ManifestError (exit 2)."""
        if self.conn.execute(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", args).fetchone() is None:
            raise ManifestError(f"{label} has no files in the manifest (a mistyped id?)")

    def _record_acks(self, kind: str, where: str, keyed: list[tuple[tuple[str, ...], str]], by: str,
                     reason: str) -> None:
        """The acknowledgement of each (row key, event item): its row's ``acked_*`` and an event."""
        at = now_iso()
        with self._tx():
            self.conn.executemany(
                f"UPDATE {kind}_items SET acked_by = ?, acked_at = ?, ack_reason = ? WHERE {where}",
                [(by, at, reason, *key) for key, _ in keyed])
            self.conn.executemany(
                "INSERT INTO events (at, run_id, kind, item, event, detail) VALUES (?, NULL, ?, ?,"
                " 'acknowledged', ?)",
                [(at, kind, item, f"by {by}: {reason}"[:500]) for _, item in keyed])

    # -- failures of a whole scope (a target, a user) ------------------------------------------
    def open_scope_failures(self, kind: str, scope: str) -> dict[str, str]:
        """``scope_id -> reason`` of the scope failures recorded for ``kind``/``scope``."""
        if self.version < 3:
            return {}
        return dict(self.conn.execute(
            "SELECT scope_id, reason FROM scope_failures WHERE kind = ? AND scope = ?", (kind, scope)).fetchall())

    def record_scope_failure(self, kind: str, scope: str, scope_id: str, *, reason: str, run_id: str | None,
                             error_class: str | None = None, detail: str | None = None,
                             event_detail: str | None = None) -> None:
        """A whole scope failed (``kind`` pull/push, ``scope`` target/user, ``reason`` e.g. list_failed,
        listed_nothing, no_token): one row per scope, ``first_seen`` kept while the reason stays the same,
        an acknowledgement kept likewise; plus a ``<scope>_<reason>`` event in the audit trail.

        ``detail`` (shown by ``status``) is our own fixed description, never a name or the server's
        text; that goes, if anywhere, into ``event_detail`` (the 0600 manifest's audit trail only)."""
        at = now_iso()
        with self._tx():
            self.conn.execute(
                "INSERT INTO scope_failures (kind, scope, scope_id, reason, error_class, detail, first_seen,"
                " last_seen, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, scope, scope_id) DO"
                " UPDATE SET first_seen = CASE WHEN reason = excluded.reason THEN first_seen ELSE excluded.first_seen"
                " END, acked_by = CASE WHEN reason = excluded.reason THEN acked_by END,"
                " acked_at = CASE WHEN reason = excluded.reason THEN acked_at END, reason = excluded.reason,"
                " error_class = excluded.error_class, detail = excluded.detail, last_seen = excluded.last_seen,"
                " run_id = excluded.run_id",
                (kind, scope, scope_id, reason, error_class, detail, at, at, run_id))
            self.conn.execute(
                "INSERT INTO events (at, run_id, kind, item, event, error_class, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (at, run_id, kind, f"{scope}/{scope_id}", f"{scope}_{reason}", error_class, event_detail or detail))

    def clear_scope_failure(self, kind: str, scope: str, scope_id: str, *, run_id: str | None) -> None:
        """The scope is sound again (its listing succeeded with files, the user has a token): forget its
        failure, with a ``scope_cleared`` event."""
        with self._tx():
            cur = self.conn.execute("DELETE FROM scope_failures WHERE kind = ? AND scope = ? AND scope_id = ?",
                                    (kind, scope, scope_id))
            if cur.rowcount:
                self.conn.execute(
                    "INSERT INTO events (at, run_id, kind, item, event) VALUES (?, ?, ?, ?, ?)",
                    (now_iso(), run_id, kind, f"{scope}/{scope_id}", f"{scope}_cleared"))

    def sync_scope_failures(self, kind: str, scope: str, failed: list[dict[str, str | None]], cleared: list[str],
                            *, run_id: str | None) -> None:
        """Many :meth:`record_scope_failure` (``failed``: their keyword arguments plus ``scope_id``) and
        :meth:`clear_scope_failure` (``cleared``: scope ids) in one transaction: one fsync for a run's
        listings, however many targets listed nothing."""
        with self._tx():
            for f in failed:
                f = dict(f)
                scope_id = f.pop("scope_id")
                assert scope_id is not None
                self.record_scope_failure(kind, scope, scope_id, run_id=run_id, **f)  # type: ignore[arg-type]
            for scope_id in cleared:
                self.clear_scope_failure(kind, scope, scope_id, run_id=run_id)

    def sync_source_problems(self, run_id: str, problems: Iterable[Any], users: Iterable[str], *,
                             every_user: bool) -> None:
        """Record a push scan's :class:`~syncer.push.plan.SourceProblem` s (kind ``push``; scope ``source``,
        ``folder`` or ``user``) and clear the ones that scan found gone: every entry of the source root
        (always rescanned), and the rows of ``users`` (every user's, when ``every_user``).  One transaction.
        ``detail`` is the problem's message (a place and a hash, never a name); the name itself goes only
        into the audit trail (``event_detail``)."""
        problems = list(problems)
        wanted = set(users)
        with self._tx():
            current = {(p.scope, p.scope_id) for p in problems}
            rows = self.conn.execute("SELECT scope, scope_id FROM scope_failures WHERE kind = 'push'"
                                     " AND scope IN ('source', 'folder', 'user')").fetchall()
            for scope, scope_id in rows:
                if (scope, scope_id) not in current and (
                        scope == "source" or every_user or scope_id.split("/", 1)[0] in wanted):
                    self.clear_scope_failure("push", scope, scope_id, run_id=run_id)
            for p in problems:
                self.record_scope_failure("push", p.scope, p.scope_id, reason=p.reason, run_id=run_id,
                                          detail=p.message, event_detail=p.name or p.message)
