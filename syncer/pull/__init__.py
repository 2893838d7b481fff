"""pull: back up each target's files.

targets -> list -> ``plan`` (against the manifest, recorded in one step) -> bounded queue -> N
downloaders (``job``) -> a sink (``syncer.store``: a folder's atomic writer, or a bucket's objects)
-> the recorder.

- ``options``: ``PullOptions`` (from the config and the flags).
- ``plan``: what to fetch, where it goes (pure decisions plus the one manifest step).
- ``job``: ``PullJob``, which does it; ``dryrun``: the same plan, reported and not done.
- ``segments``: a big file in parallel Range segments into a folder (``pieces``: its pieces, their
  record and the in-order sha256; ``slots``: the transfer connections whole files and segments share).

May import: ``syncer.api`` (segments: the ranged download and its error), ``syncer.run``,
``syncer.manifest``, ``syncer.local``, ``syncer.store``, ``syncer.crypto``, ``syncer.inputs``, ``models``,
``errors``, ``logs``.  Imported by: ``cli``, ``demo``.
"""
