"""The manifest's reads for reports: the finished files ``verify`` checks (a count, a sample chosen in SQL,
pages along an index: memory stays flat at a million rows) and the summary behind ``syncer status``.

A mixin of :class:`syncer.manifest.store.Manifest` (it uses the manifest's connection and ``version``);
read-only: nothing here writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from syncer.manifest.schema import ENCRYPTION_SCHEMA


class ReportQueries:
    conn: sqlite3.Connection
    version: int

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        # {enc} in the done-rows query: how each file is stored and the stored object's size and digest
        # (from ENCRYPTION_SCHEMA on; an older manifest read as it is has no such columns).
        enc = ", encrypted, stored_size, stored_sha256" if self.version >= ENCRYPTION_SCHEMA else ""
        cur = self.conn.execute(sql.replace("{enc}", enc), args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur]

    def pull_done_rows(self) -> list[dict[str, Any]]:
        return self._rows(self._DONE)

    def pull_done_count(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM ({self._DONE.replace('{enc}', '')})").fetchone()[0]

    def pull_not_backed_up(self) -> tuple[int, int]:
        """(files the manifest knows that are not backed up and not acknowledged, acknowledged ones):
        pending, failed or permanent.  A backup with such files is not whole, whatever its files hash to."""
        acked = "acked_at IS NOT NULL" if self.version >= 3 else "0"
        row = self.conn.execute(
            f"SELECT count(*) - coalesce(sum({acked}), 0), coalesce(sum({acked}), 0) FROM pull_items"
            " WHERE state IN ('pending', 'failed', 'permanent')").fetchone()
        return int(row[0]), int(row[1])

    def pull_targets_not_listed(self) -> int:
        """Targets whose files are unknown (their listing failed or was incomplete, not acknowledged):
        whatever they hold is not backed up, and no row says so."""
        if self.version < 3:
            return 0
        return self.conn.execute(
            "SELECT count(*) FROM scope_failures WHERE kind = 'pull' AND acked_at IS NULL"
            " AND reason IN ('list_failed', 'not_found', 'incomplete_listing')").fetchone()[0]

    def pull_done_sample(self, n: int) -> list[dict[str, Any]]:
        """``n`` distinct done rows chosen uniformly in SQL: a top-``n`` sort over random keys keeps only
        ``n`` rows in memory, whatever the manifest's size."""
        return self._rows(f"{self._DONE} ORDER BY random() LIMIT ?", (max(0, n),))

    def pull_done_pages(self, size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Every done row, ``size`` at a time in path order (the unique path_key index): each page is its
        own short read, so no read transaction is held open while the caller works through a page."""
        last = ""
        while page := self._rows(self._DONE_PAGE, (last, size)):
            yield page
            last = page[-1]["path_key"]

    def pull_storage_counts(self) -> dict[str, int]:
        """Backed-up files stored plain and encrypted (age), for ``status``."""
        if self.version < ENCRYPTION_SCHEMA:
            n = self.conn.execute(
                "SELECT count(*) FROM pull_items WHERE state IN ('done', 'remote_deleted')").fetchone()[0]
            return {"plain": n, "encrypted": 0}
        counts = {"plain": 0, "encrypted": 0}
        for enc, n in self.conn.execute(
                "SELECT encrypted, count(*) FROM pull_items WHERE state IN ('done', 'remote_deleted')"
                " GROUP BY encrypted"):
            counts["encrypted" if enc else "plain"] += n
        return counts

    def pull_encrypted_rows(self) -> int:
        """Rows recorded as stored encrypted, whatever their state (turning encryption off must not
        leave them behind silently)."""
        if self.version < ENCRYPTION_SCHEMA:
            return 0
        return self.conn.execute("SELECT count(*) FROM pull_items WHERE encrypted = 1").fetchone()[0]

    # -- status --------------------------------------------------------------------------------
    def summary(self, *, runs: int = 10, failures: int = 50) -> dict[str, Any]:
        """Counts and bytes by state, the last runs, and the failed items: for ``syncer status``."""
        out: dict[str, Any] = {"manifest": str(self.path), "schema": self.version}
        for kind, table, size_col in (("pull", "pull_items", "size"), ("push", "push_items", "size")):
            states = {
                row[0]: {"count": row[1], "bytes": row[2] or 0}
                for row in self.conn.execute(
                    f"SELECT state, count(*), sum({size_col}) FROM {table} GROUP BY state")
            }
            # What tells a failed item, and which states list it, differ by kind; the rest is the same.
            key_sql, key_names, listed = (
                ("target_type || ':' || target_id, file_id", ("target", "file_id"), "('failed', 'permanent')")
                if kind == "pull" else
                ("user_id, rel_path", ("user_id", "rel_path"), "('failed', 'permanent', 'uploading')"))
            acks = ", acked_by, acked_at, ack_reason" if self.version >= 3 else ", NULL, NULL, NULL"
            failed = self.conn.execute(
                f"SELECT {key_sql}, state, attempts, error_class, last_error, updated_at{acks} FROM {table}"
                f" WHERE state IN {listed} ORDER BY updated_at DESC LIMIT ?", (failures,)).fetchall()
            items = [dict(zip((*key_names, "state", "attempts", "error_class", "last_error", "updated_at",
                               "acked_by", "acked_at", "ack_reason"), r, strict=True)) for r in failed]
            acked = {"count": 0, "bytes": 0}
            if self.version >= 3:
                n, b = self.conn.execute(
                    f"SELECT count(*), sum(size) FROM {table} WHERE state = 'permanent'"
                    " AND acked_at IS NOT NULL").fetchone()
                acked = {"count": n, "bytes": b or 0}
            out[kind] = {"states": states, "failed": items, "acknowledged": acked}
            if kind == "pull":
                out[kind]["stored"] = self.pull_storage_counts()
        cur = self.conn.execute(
            "SELECT id, kind, started, ended, outcome, files_done, bytes_done, failed, skipped, pid, host"
            " FROM runs ORDER BY started DESC LIMIT ?", (runs,))
        cols = [d[0] for d in cur.description]
        out["runs"] = [dict(zip(cols, r, strict=True)) for r in cur]
        out["scope_failures"] = []
        if self.version >= 3:
            cur = self.conn.execute(
                "SELECT kind, scope, scope_id, reason, error_class, detail, first_seen, last_seen, run_id, acked_by,"
                " acked_at FROM scope_failures ORDER BY kind, scope, reason, scope_id")
            cols = [d[0] for d in cur.description]
            out["scope_failures"] = [dict(zip(cols, r, strict=True)) for r in cur]
        return out
