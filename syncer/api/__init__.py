"""The wire: the Files API (v3) client and everything between it and aiohttp.

- ``client``: ``FilesClient`` (list, file info, view-link download, upload) and the two sessions.
- ``results``: what it hands back: a ``Listing`` (parsed) and an open ``Download`` (bounded, checked).
- ``translate``: the one place aiohttp exceptions and HTTP statuses become ``syncer.errors``.
- ``retry``: the one retry policy (tenacity), honouring ``Retry-After``.

May import: ``syncer.errors``, ``syncer.models``, ``syncer.config``, ``syncer.redact``/``logs``.
Imported by: ``syncer.run`` (the session of a run), ``syncer.report.listing``.  This is the only package
that imports aiohttp's client.
"""
