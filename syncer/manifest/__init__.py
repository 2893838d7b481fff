"""All SQLite: the manifest (every item's progress, every run, the audit trail).

- ``schema``: the tables and their migrations (``PRAGMA user_version``).
- ``store``: ``Manifest``, the one owner of every read and write.
- ``recorder``: the run's one writer task, batching outcomes into one transaction.
- ``reports``: the reads behind ``verify`` and ``status`` (read only), a mixin of ``Manifest``.
- ``restore_rows``: what a restore put where (``restore_items``).
- ``failures``: acknowledgements of permanent failures and failures of a whole target, user or entry of
  a push source (``scope_failures``): a mixin of ``Manifest``.
- ``opening``: a manifest path that is a folder refused, an empty file made private before it is filled,
  and the read-only open (``mode=ro``, else ``immutable``) that writes nothing.

The recorder imports the store, never the other way round.  May import: ``syncer.errors``,
``syncer.local`` (private files, folder fsyncs).  Imported by: the jobs, ``syncer.run``, ``syncer.report``.
"""

from typing import TYPE_CHECKING, Any

from syncer.manifest.schema import ENCRYPTION_SCHEMA, MIGRATIONS, SCHEMA_VERSION
from syncer.manifest.store import Manifest, Update, now_iso

if TYPE_CHECKING:
    from syncer.manifest.recorder import Recorder


def __getattr__(name: str) -> Any:
    """``Recorder`` on first use: it needs asyncio, which ``status``, ``ack`` and ``verify`` (readers of the
    manifest, no event loop) should not pay for at start-up."""
    if name == "Recorder":
        from syncer.manifest.recorder import Recorder

        return Recorder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENCRYPTION_SCHEMA", "MIGRATIONS", "SCHEMA_VERSION", "Manifest", "Recorder", "Update", "now_iso"]
