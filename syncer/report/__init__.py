"""What a person or a monitor reads: status, verify, one target's listing, progress and metrics.

May import: ``syncer.manifest``, ``syncer.local``, ``syncer.run.stats``, ``models``, ``logs``;
``listing`` also ``syncer.api`` (lazily); ``status`` (``--all-shards``) ``syncer.store`` (lazily).
Imported by: ``cli`` (and ``run`` for progress and metrics).
"""
