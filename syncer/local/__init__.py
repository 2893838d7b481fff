"""The local disk: safe names, private files and folders, the atomic download writer, the run lock.

- ``names``: server-given names to one safe path component (pure, no I/O).
- ``storage``: private (0600/0700) paths and files, the inside-the-destination check, the push walk.
- ``writer``: the atomic writer (hidden temp, fsync, rename) that downloads stream into; ``temp`` its
  hidden temp file; ``partial`` its positional writes (big files' segments) and what a kept partial is.
- ``batch``: the group commit of small files (one thread, one syncfs or an fsync each, then renames).
- ``lock``: one run per manifest.

May import: ``syncer.errors`` only.  Imported by: the jobs, ``syncer.manifest``, ``syncer.report``.
"""
