"""restore: put a backup back, into the account it came from or into another one, exactly once.

The backup's manifest (opened read-only; its ``pull_items`` and ``pull.dest``) + the user map ->
``plan`` (pure: each mapped user's backed-up files against a fresh listing of the destination user and
this restore's own rows) -> M uploaders (``job``, through :mod:`syncer.push.upload`, the uploader push
uses: intent before POST, reconciliation of lost answers) -> the recorder (``restore_items``).

- ``options``: ``RestoreOptions`` from the restore's config, the backup's config and the flags.
- ``plan``: which files go where under which name, and which are skipped and why (no I/O).
- ``reader``: the backup's bytes for one row, checked against the manifest's sha256 before anything is
  sent: a folder's files or a bucket's objects, plain or age (``--identity``; plaintext never on disk).
- ``job``: ``RestoreJob``, which does it; ``dryrun``: the same plan, reported, nothing sent or written.

May import: ``syncer.run``, ``syncer.manifest``, ``syncer.local``, ``syncer.inputs``, ``syncer.push.upload``,
``syncer.crypto`` and ``syncer.store`` (the reader, lazily),
``syncer.api`` (a client for the dry run), ``config``, ``models``, ``errors``, ``logs``.
Imported by: ``cli``, ``demo``.
"""
