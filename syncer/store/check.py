"""``syncer verify`` for a bucket: the objects against the manifest's sizes and SHA-256 digests.

The same rows and report as a folder's verify (:mod:`syncer.report.verify`): ``done`` items and
``remote_deleted`` ones with a digest, a random sample (default 100) or ``--all``.  An encrypted
(``.age``) object is checked against the stored size and sha256 the manifest recorded for it (the
ciphertext's): no key is needed.  With ``--decrypt --identity`` an age object is decrypted
(streamed, never held or written) and its plaintext checked, as for a folder.

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
NO_KEY = "no_key: "


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


def _decrypt_sync(sink: ObjectSink, row: dict[str, Any], identities: list[Any]) -> tuple[Problem | None, int]:
    """An age object decrypted and its plaintext compared with the manifest (``verify --decrypt``)."""
    import obstore.exceptions as oe

    from syncer.crypto.stream import DecryptFailed, NoMatchingKey, open_plaintext
    from syncer.store.reading import ObjectReader

    def plain_problem(kind: str, detail: str, size: int | None = None, sha: str | None = None) -> Problem:
        p = _problem(row, kind, detail, size, sha)
        p.expected_size, p.expected_sha256 = row["size"], row["sha256"]
        return p

    h = hashlib.sha256()
    size = 0
    try:
        for chunk in open_plaintext(ObjectReader(sink, row["local_path"]), identities):
            h.update(chunk)
            size += len(chunk)
    except NoMatchingKey as exc:
        p = plain_problem(CHANGED, f"cannot decrypt it: {exc}")
        p.detail = NO_KEY + p.detail
        return p, 0
    except DecryptFailed as exc:
        return plain_problem(CHANGED, f"it fails age's authentication: {exc}"), 0
    except (oe.NotFoundError, FileNotFoundError):
        return plain_problem(MISSING, "no object at this key"), 0
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return plain_problem(UNREADABLE, str(translate(exc, "reading an object"))), 0
    digest = h.hexdigest()
    if row["size"] is not None and size != row["size"]:
        return plain_problem(CHANGED, f"decrypted size {size}, expected {row['size']}", size, digest), size
    if digest != row["sha256"]:
        return plain_problem(CHANGED, "decrypted content differs from the recorded SHA-256", size, digest), size
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
        if stored is None:  # every object syncer PUTs carries it: this one was written some other way
            return _problem(row, CHANGED, "the object carries no stored SHA-256", size, None), 0
        if stored != want_sha:
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
                         rng: random.Random | None = None, identities: list[Any] | None = None) -> VerifyReport:
    """Check ``sample`` random backed-up objects (``None``: all); ManifestError without a manifest.
    ``identities`` (``--decrypt``): age objects are decrypted and their plaintext checked instead."""
    started = time.monotonic()
    manifest = Manifest.open(Path(manifest_path), create=False, readonly=True)
    try:
        rows = manifest.pull_done_rows()
        not_backed_up, acknowledged = manifest.pull_not_backed_up()
        targets_not_listed = manifest.pull_targets_not_listed()
    finally:
        manifest.close()
    mode = ("quick-" if quick else "") + ("all" if sample is None else "sample")
    report = VerifyReport(manifest=str(manifest_path), dest=str(sink.loc), mode=mode, eligible=len(rows),
                          not_backed_up=not_backed_up, acknowledged=acknowledged,
                          targets_not_listed=targets_not_listed)
    if sample is not None and sample < len(rows):
        rows = (rng or random.SystemRandom()).sample(rows, max(0, sample))
    rows.sort(key=lambda r: r["local_path"])
    sizes = await _listing(sink) if quick else {}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(row: dict[str, Any]) -> tuple[Problem | None, int]:
        async with gate:
            if identities and row.get("encrypted") and not quick:
                return await asyncio.to_thread(_decrypt_sync, sink, row, identities)
            return await (_check_quick(sink, row, sizes) if quick else _check_full(sink, row))

    for row, (problem, nbytes) in zip(rows, await asyncio.gather(*(one(r) for r in rows)), strict=True):
        report.checked += 1
        report.bytes_hashed += nbytes
        if problem is None:
            report.ok += 1
        else:
            report.problems.append(problem)
        if identities and row.get("encrypted") and not quick:
            if problem is not None and problem.detail.startswith(NO_KEY):
                report.no_key += 1
                problem.detail = problem.detail[len(NO_KEY):]
            elif problem is None or problem.actual_sha256 is not None:
                report.decrypted += 1  # opened with the key (its plaintext compared)
    report.problems.sort(key=lambda p: (p.kind, p.local_path))
    report.elapsed = time.monotonic() - started
    return report
