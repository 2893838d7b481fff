"""The manifest's snapshot in the bucket: what lets a pod with no persistent volume carry on.

The manifest stays a local SQLite file (WAL needs a local disk).  At the end of every run (SIGTERM
included: the run stops gracefully first) a consistent copy, made with SQLite's backup API, is uploaded
to ``<prefix>/_syncer/<shard>/manifest.sqlite``.  A pull that finds no local manifest fetches its
shard's snapshot first and carries on from it instead of downloading the clinic again.  ``<shard>`` is
``all`` for an unsharded run and ``K-of-N`` for ``--shard K/N``.  ``status --all-shards`` reads every
shard's snapshot (:func:`fetch_all`).

A run also marks itself in the bucket (``_syncer/<shard>/running``, removed when it ends): a run that
finds the mark knows the last one was killed, and first aborts the incomplete multipart uploads it left
in this shard's folders (``syncer.store.s3.abort_stale_uploads``).

A snapshot that cannot be uploaded is a warning, not a failed run: the backup itself is in the bucket,
and the next run uploads a newer snapshot.  (A lost snapshot costs a re-listing: every object already
there is taken as done when its bytes match, see ``ObjectWriter``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import tempfile
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncer.config import S3Config

from syncer.config import url_refusal
from syncer.local.storage import _write_all
from syncer.logs import event, scrub
from syncer.manifest import now_iso
from syncer.store.s3 import Location, ObjectSink, endpoint_of, target_folder
from syncer.store.s3errors import translate

log = logging.getLogger("syncer.store")

SNAPSHOT_DIR = "_syncer"
SNAPSHOT_NAME = "manifest.sqlite"
MARKER_NAME = "running"


def shard_name(shard: tuple[int, int] | None) -> str:
    return "all" if shard is None else f"{shard[0]}-of-{shard[1]}"


def snapshot_key(shard: str) -> str:
    return f"{SNAPSHOT_DIR}/{shard}/{SNAPSHOT_NAME}"


def _private_temp(folder: Path, prefix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    os.fchmod(fd, 0o600)
    os.close(fd)
    return Path(name)


def backup_copy(manifest_path: Path, out: Path) -> None:
    """A consistent copy of the manifest (SQLite's backup API: pages from one read snapshot, even while
    another connection writes).  Blocking."""
    src = sqlite3.connect(f"file:{manifest_path.resolve()}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
    finally:
        src.close()


async def upload(sink: ObjectSink, manifest_path: Path, shard: str) -> bool:
    """Upload a snapshot of ``manifest_path``; False (and a warning) when it could not be done."""
    import obstore

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        return False
    tmp = _private_temp(manifest_path.parent, ".manifest-snapshot-")
    try:
        await asyncio.to_thread(backup_copy, manifest_path, tmp)
        await obstore.put_async(sink.store, snapshot_key(shard), tmp)
    except Exception as exc:  # noqa: BLE001 - a warning: the run's outcome stands
        why = translate(exc, "uploading the manifest snapshot") if not isinstance(exc, sqlite3.Error) \
            else f"copying the manifest: {exc}"
        event(log, "snapshot_failed", level=logging.WARNING, message=f"manifest snapshot not uploaded: {why}")
        return False
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    event(log, "snapshot_uploaded", level=logging.INFO, shard=shard,
          message=f"manifest snapshot uploaded to {sink.loc}/{snapshot_key(shard)}")
    return True


async def _download(sink: ObjectSink, key: str, out: Path) -> None:
    import obstore

    got = await obstore.get_async(sink.store, key)
    fd = os.open(out, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        async for chunk in got.stream(min_chunk_size=1 << 20):
            await asyncio.to_thread(_write_all, fd, [bytes(chunk)])  # a short write must not lose bytes
        await asyncio.to_thread(os.fsync, fd)
    finally:
        os.close(fd)


async def fetch(sink: ObjectSink, manifest_path: Path, shard: str) -> bool:
    """With no local manifest, put the shard's snapshot in its place; True when one was fetched.
    No snapshot in the bucket (the first run) is fine: False."""
    import obstore.exceptions as oe

    manifest_path = Path(manifest_path)
    if manifest_path.exists():
        return False
    tmp = _private_temp(manifest_path.parent, ".manifest-fetch-")
    try:
        try:
            await _download(sink, snapshot_key(shard), tmp)
        except (oe.NotFoundError, FileNotFoundError):
            return False
        except Exception as exc:  # noqa: BLE001 - translated: the run must not start without it
            raise translate(exc, "fetching the manifest snapshot") from exc
        os.replace(tmp, manifest_path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    event(log, "snapshot_fetched", level=logging.INFO, shard=shard,
          message=f"no local manifest: carried on from the snapshot {sink.loc}/{snapshot_key(shard)}")
    return True


async def fetch_all(sink: ObjectSink, folder: Path) -> list[tuple[str, Path, bool]]:
    """Every shard's snapshot downloaded into ``folder``: ``[(shard, path, marked running)]`` sorted by
    shard.  Marked running: a run of that shard is going on, or was killed (its mark stayed)."""
    import obstore

    found: list[str] = []
    running: set[str] = set()
    try:
        async for page in obstore.list(sink.store, SNAPSHOT_DIR, chunk_size=1000):
            for meta in page:
                parts = meta["path"].split("/")
                if len(parts) == 3 and parts[2] == SNAPSHOT_NAME:
                    found.append(parts[1])
                elif len(parts) == 3 and parts[2] == MARKER_NAME:
                    running.add(parts[1])
    except Exception as exc:  # noqa: BLE001 - translated
        raise translate(exc, "listing the shards' snapshots") from exc
    out: list[tuple[str, Path, bool]] = []
    for shard in sorted(found, key=_shard_order):
        path = folder / f"{shard}.sqlite"
        path.touch(mode=0o600)
        try:
            await _download(sink, snapshot_key(shard), path)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "fetching a shard's snapshot") from exc
        out.append((shard, path, shard in running))
    return out


def _shard_order(name: str) -> tuple[int, int, str]:
    k, _, n = name.partition("-of-")
    return (int(n), int(k), name) if k.isdigit() and n.isdigit() else (0, -1, name)


def marker_key(shard: str) -> str:
    return f"{SNAPSHOT_DIR}/{shard}/{MARKER_NAME}"


class SnapshotHooks:
    """The run harness's hooks for an ``s3://`` pull (``syncer.run.runner.execute``).

    Before the manifest is opened: check the bucket, clean up after a run of this shard that did not
    finish, mark this one as running, fetch the snapshot if there is no local manifest.  After the run
    (whatever its outcome): upload the snapshot, remove the mark.  The mark (``_syncer/<shard>/running``,
    no patient data in it) is what tells a new pod that the last run was killed, even when its manifest
    snapshot predates that run."""

    def __init__(self, sink: ObjectSink, shard: str, targets: Iterable[Any] = ()):
        self.sink = sink
        self.shard = shard
        self.folders = {target_folder(t) for t in targets}

    async def before_open(self, manifest_path: Path) -> None:
        import obstore
        import obstore.exceptions as oe

        await self.sink.prepare()  # a missing bucket or refused credentials: stop before anything
        key = marker_key(self.shard)
        try:
            await obstore.head_async(self.sink.store, key)
            unfinished = True
        except (oe.NotFoundError, FileNotFoundError):
            unfinished = False
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "reading the run marker") from exc
        if unfinished and self.folders:
            aborted = await asyncio.to_thread(abort_stale_uploads, self.sink.loc, self.sink.s3, self.folders,
                                              self.sink.started)
            event(log, "aborted_uploads", level=logging.INFO, shard=self.shard,
                  message=f"the last run of this shard did not finish: aborted {aborted} incomplete uploads")
        mark = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": now_iso()}).encode()
        try:
            await obstore.put_async(self.sink.store, key, mark)
        except Exception as exc:  # noqa: BLE001 - translated: a bucket we cannot write to stops the run here
            raise translate(exc, "writing the run marker") from exc
        await fetch(self.sink, manifest_path, self.shard)

    async def after_run(self, manifest_path: Path) -> None:
        import obstore

        await upload(self.sink, manifest_path, self.shard)
        try:
            await obstore.delete_async(self.sink.store, marker_key(self.shard))
        except Exception as exc:  # noqa: BLE001 - a warning: the next run only cleans up for nothing
            event(log, "marker_left", level=logging.WARNING,
                  message=f"cannot remove the run marker: {translate(exc, 'deleting the run marker')}")


def hooks_for(cfg: Any, shard: tuple[int, int] | None, targets: Iterable[Any] = ()) -> SnapshotHooks:
    return SnapshotHooks(ObjectSink.from_config(str(cfg.pull.dest), cfg), shard_name(shard), targets)


def abort_stale_uploads(loc: Location, s3: S3Config | None, folders: set[str], before: datetime) -> int:
    """Abort the incomplete multipart uploads under ``folders`` (this run's targets: never another
    shard's) started before ``before``; the number aborted.  Blocking.

    obstore (0.12) cannot list incomplete uploads, so this uses boto3 when it is installed; without it
    nothing is aborted and the bucket's lifecycle rule (README: AbortIncompleteMultipartUpload) has to
    clean up.  Any failure here is a warning: the incomplete uploads are invisible and cost storage only.
    boto3 costs ~38 MB of memory and ~130 ms: it is loaded only after a run that did not finish.
    """
    try:
        import boto3
    except ImportError:
        log.debug("boto3 is not installed: incomplete multipart uploads are left to the lifecycle rule")
        return 0
    endpoint = endpoint_of(s3) or None
    if endpoint and url_refusal(endpoint):  # the one URL rule (make_store refused it already)
        return 0
    region = (s3.region if s3 else "") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") \
        or "us-east-1"
    base = f"{loc.prefix}/" if loc.prefix else ""
    aborted = 0
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region)
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=loc.bucket, Prefix=base):
            for up in page.get("Uploads", []):
                rel = up["Key"][len(base):]
                if "/".join(rel.split("/")[:2]) in folders and up["Initiated"] < before:
                    client.abort_multipart_upload(Bucket=loc.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    aborted += 1
    except Exception as exc:  # noqa: BLE001 - a warning only; never the key (a file name) in it
        log.warning("cannot abort incomplete multipart uploads: %s", scrub(type(exc).__name__))
    return aborted
