"""Sinks: where backup bytes live, a local folder or an object-store bucket, the same key layout in both.

A pull writes every file through a :class:`Sink`.  ``sink.writer(rel, ...)`` returns a writer-like
object (``existing_bytes`` / ``open`` / ``write`` / ``commit`` / ``abort``, the shape of
:class:`syncer.local.writer.AtomicWriter`), so a stream transform (age encryption) can wrap either:
``syncer.crypto.sinkwriter.writer_for`` is where a pull gets its writer.
``sink.presence(target)`` answers the planner's questions about what is already there (is the finished
copy still present, can a complete copy left by a killed run be adopted, is there a partial to resume).
``rel`` is always ``<target_type>/<target_id>/<category>/<safe name>`` (``syncer.pull.plan``).

- ``local``: the folder sink: today's atomic writer (hidden temp, fsync, rename); the recorder fsyncs
  the folders before it records files done.
- ``s3``: the object sink on obstore (imported only when a dest is ``s3://``): single PUT below
  ``MULTIPART_THRESHOLD``, a streamed multipart upload above it; never a partial object under a key.
- ``s3errors``: obstore's failures translated, once, into syncer's errors (no key, URL or secret).
- ``snapshot``: the manifest's snapshot in the bucket (upload at the end of a run, fetch on a fresh
  machine), the run mark and the clean-up after a killed run, the fleet view of ``status --all-shards``.
- ``check``: ``verify`` for a bucket (re-read and hash a sample, or compare the listing only; age
  objects against their stored digests, or decrypted with ``--decrypt``).
- ``reading``: one object read back with the blocking API (restore from a bucket, verify's decryption).

May import: ``syncer.errors``, ``syncer.logs``, ``syncer.local``, ``syncer.manifest`` (snapshot, check),
``syncer.config`` (types only), ``syncer.report.verify`` (check: its report types).  Imported by:
``syncer.pull``, ``syncer.cli``, ``syncer.report`` (lazily), ``config`` (the URL's check, lazily).
``syncer.run`` never imports it: the runner only calls the hooks it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from syncer.config import Config

OBJECT_SCHEMES = ("s3://",)


class Presence(Protocol):
    """What a sink already holds, for the planner (blocking calls, made on the manifest's thread)."""

    def size(self, rel: str) -> int | None: ...          # the size of what is at rel, None: nothing
    def adopt(self, rel: str, size: int | None) -> str | None: ...  # sha256 of a complete copy there
    def partials(self, folder: str) -> set[str]: ...     # names of resumable partials in folder


def is_object_dest(dest: object) -> bool:
    """Whether ``dest`` names a bucket (``s3://bucket/prefix``) rather than a local folder."""
    return isinstance(dest, str) and dest.startswith(OBJECT_SCHEMES)


def open_sink(dest: str | Path, cfg: Config | None = None) -> Any:
    """The sink for ``dest``: a :class:`~syncer.store.local.LocalSink` for a folder, an
    :class:`~syncer.store.s3.ObjectSink` for ``s3://`` (the only place that imports obstore)."""
    if is_object_dest(dest):
        from syncer.store.s3 import ObjectSink

        return ObjectSink.from_config(str(dest), cfg)
    from syncer.store.local import LocalSink

    return LocalSink(Path(dest), durability=cfg.pull.durability if cfg is not None else "syncfs")
