"""``syncer verify`` for a bucket: the objects against the manifest's sizes and SHA-256 digests.

The same rows and report as a folder's verify (:mod:`syncer.report.verify`): ``done`` items and
``remote_deleted`` ones with a digest, a random sample (default 100) or ``--all``.  An encrypted
(``.age``) object is checked against the stored size and sha256 the manifest recorded for it (the
ciphertext's): no key is needed.

- Full (default): each object is read back (streamed, never held whole) and hashed: ``ok``,
  ``missing`` (no object at its key), ``changed`` (size or digest differs), ``unreadable`` (the store
  refused or failed).
- ``--quick``: nothing is downloaded.  One listing of the backup gives every object's size; objects
  written in one PUT also carry their sha256 as metadata, read with a HEAD and compared.  (A multipart
  object has no whole-file digest in the store: the quick check compares its size only; the store
  checked each part's SHA-256 on arrival.)
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path
from typing import Any

from syncer.manifest import Manifest
from syncer.report.verify import CHANGED, MISSING, UNREADABLE, Problem, VerifyReport
from syncer.store.s3 import ObjectSink, translate

CONCURRENCY = 4


def _stored(row: dict[str, Any]) -> tuple[int | None, str | None]:
    """The size and sha256 the object itself should have: an age object's are the ciphertext's."""
    if row.get("encrypted"):
        return row.get("stored_size"), row.get("stored_sha256")
    return row["size"], row["sha256"]


def _problem(row: dict[str, Any], kind: str, detail: str, size: int | None = None,
             sha: str | None = None) -> Problem:
    want_size, want_sha = _stored(row)
    return Problem(kind, f"{row['target_type']}:{row['target_id']}", row["file_id"], row["local_path"], detail,
                   want_size, size, want_sha, sha)


async def _check_full(sink: ObjectSink, row: dict[str, Any]) -> tuple[Problem | None, int]:
    import obstore
    import obstore.exceptions as oe

    h = hashlib.sha256()
    size = 0
    try:
        got = await obstore.get_async(sink.store, row["local_path"])
        async for chunk in got.stream(min_chunk_size=1 << 20):
            h.update(memoryview(chunk))
            size += len(chunk)
    except (oe.NotFoundError, FileNotFoundError):
        return _problem(row, MISSING, "no object at this key"), 0
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return _problem(row, UNREADABLE, str(translate(exc, "reading an object"))), size
    digest = h.hexdigest()
    want_size, want_sha = _stored(row)
    if want_size is not None and size != want_size:
        return _problem(row, CHANGED, f"size {size}, expected {want_size}", size, digest), size
    if digest != want_sha:
        return _problem(row, CHANGED, "content differs from the recorded SHA-256", size, digest), size
    return None, size


async def _check_quick(sink: ObjectSink, row: dict[str, Any], sizes: dict[str, int]) -> tuple[Problem | None, int]:
    size = sizes.get(row["local_path"])
    if size is None:
        return _problem(row, MISSING, "no object at this key"), 0
    want_size, want_sha = _stored(row)
    if want_size is not None and size != want_size:
        return _problem(row, CHANGED, f"size {size}, expected {want_size}", size), 0
    from syncer.store.s3 import MULTIPART_THRESHOLD

    if size <= MULTIPART_THRESHOLD:
        try:
            stored = await sink.stored_sha256(row["local_path"])
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            return _problem(row, UNREADABLE, str(exc)), 0
        if stored is not None and stored != want_sha:
            return _problem(row, CHANGED, "the object's stored SHA-256 differs from the recorded one", size,
                            stored), 0
    return None, 0


async def _listing(sink: ObjectSink) -> dict[str, int]:
    import obstore

    sizes: dict[str, int] = {}
    try:
        async for page in obstore.list(sink.store, None, chunk_size=1000):
            for meta in page:
                sizes[meta["path"]] = meta["size"]
    except Exception as exc:  # noqa: BLE001 - translated
        raise translate(exc, "listing the backup") from exc
    return sizes


async def verify_objects(sink: ObjectSink, manifest_path: Path, *, sample: int | None, quick: bool = False,
                         rng: random.Random | None = None) -> VerifyReport:
    """Check ``sample`` random backed-up objects (``None``: all); ManifestError without a manifest."""
    started = time.monotonic()
    manifest = Manifest.open(Path(manifest_path), create=False, readonly=True)
    try:
        rows = manifest.pull_done_rows()
        not_backed_up, acknowledged = manifest.pull_not_backed_up()
    finally:
        manifest.close()
    mode = ("quick-" if quick else "") + ("all" if sample is None else "sample")
    report = VerifyReport(manifest=str(manifest_path), dest=str(sink.loc), mode=mode, eligible=len(rows),
                          not_backed_up=not_backed_up, acknowledged=acknowledged)
    if sample is not None and sample < len(rows):
        rows = (rng or random.SystemRandom()).sample(rows, max(0, sample))
    rows.sort(key=lambda r: r["local_path"])
    sizes = await _listing(sink) if quick else {}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(row: dict[str, Any]) -> tuple[Problem | None, int]:
        async with gate:
            return await (_check_quick(sink, row, sizes) if quick else _check_full(sink, row))

    for problem, nbytes in await asyncio.gather(*(one(r) for r in rows)):
        report.checked += 1
        report.bytes_hashed += nbytes
        if problem is None:
            report.ok += 1
        else:
            report.problems.append(problem)
    report.problems.sort(key=lambda p: (p.kind, p.local_path))
    report.elapsed = time.monotonic() - started
    return report
