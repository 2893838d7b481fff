"""The object sink: backup files as objects in an S3-compatible bucket, through obstore.

obstore (Rust ``object_store``) is imported here only, and this module only when a dest is ``s3://``:
a local backup's start-up never pays for it (README, stack notes).

Decisions:

- Keys are ``<prefix>/<rel>``, ``rel`` being the path a folder backup uses: the same tree in both.
- No partial object is ever visible under a key.  A file up to ``MULTIPART_THRESHOLD`` is buffered
  and sent in one PUT (atomic), ``mode="create"`` unless this manifest completed the key before, so a file of
  another target (another shard) is never replaced; an object already there with the same sha256 is
  taken as ours.  A bigger file streams into a multipart upload (parts of ``PART_SIZE``, two in flight,
  so memory stays flat) that becomes visible only when completed; cancelled or failed, obstore aborts
  it.  A killed process leaves an incomplete upload: the next run clears it (``syncer.store.snapshot``).
- Integrity: the store is told to check SHA-256 on arrival (``checksum_algorithm="SHA256"``: every PUT
  and part carries ``x-amz-checksum-sha256``).  A single-PUT object also carries our whole-file
  sha256 as user metadata (``x-amz-meta-sha256``), which ``verify --quick`` and adoption read with a
  HEAD.  A multipart object cannot (its metadata is sent before its bytes): verify re-reads it.
- Every object is labelled with the file id it holds (``x-amz-meta-file-id``, ``writer(owner=)``): a key
  new to this manifest that holds an object of the same file id is ours (a killed run's encrypted copy,
  whose bytes differ on every run) and is replaced; another file's object never is.
- Errors are translated once (:func:`translate`): no URL, key (file names are patient data) or
  secret in a message.  5xx (503 SlowDown) and connection errors are retried by obstore with the
  run's retry settings; what still fails is a TransientError (the item is retried next run).
  Credentials rejected or access denied end the run (an AuthError); a missing bucket is a
  ConfigError, found before any download by :meth:`ObjectSink.prepare`.
- Credentials come from obstore's defaults (AWS_* environment, web identity, instance metadata),
  never from the config; the secret values are registered for redaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from syncer.config import Location, url_refusal
from syncer.errors import ConfigError
from syncer.local.partial import Received, SizeMismatchError
from syncer.logs import register_secret, scrub
from syncer.store.s3errors import (  # noqa: F401 - re-exported: the sink's errors
    StoreAccessError,
    StoreItemError,
    StoreUnavailable,
    translate,
)

if TYPE_CHECKING:
    from syncer.config import Config, S3Config

log = logging.getLogger("syncer.store")

MULTIPART_THRESHOLD = 8 << 20   # bigger files go up in parts; smaller ones in one PUT (buffered)
PART_SIZE = 8 << 20             # S3 wants parts of at least 5 MiB (the last excepted)
PARTS_IN_FLIGHT = 2             # per upload: memory per big file ~ (2 + 1) * PART_SIZE
FEED_BYTES = 1 << 20            # the downloader hands the uploader 1 MiB at a time
OWNER_ATTR = "file-id"          # user metadata: the file id an object was stored for (x-amz-meta-file-id)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


# -- the store ---------------------------------------------------------------------------------------
def endpoint_of(s3: Any) -> str:
    """The store's endpoint: ``s3.endpoint_url``, else ``AWS_ENDPOINT_URL``, else ``AWS_ENDPOINT`` (which obstore
    reads too); "" for AWS itself.  Every client of the bucket (obstore's, boto3's clean-up) takes it from
    here, so they all talk to the same store."""
    return ((s3.endpoint_url if s3 else "") or os.environ.get("AWS_ENDPOINT_URL", "")
            or os.environ.get("AWS_ENDPOINT", ""))


def make_store(loc: Location, s3: S3Config | None = None, retry: Any = None) -> Any:
    """An obstore ``S3Store`` for ``loc`` (keys relative to its prefix).  Credentials: obstore's
    defaults (AWS_* variables, web identity, instance metadata); their values are registered as
    secrets so no log line or message can show them."""
    try:
        from obstore.store import S3Store
    except ImportError:
        raise ConfigError(f"pull.dest {loc} needs obstore: pip install 'syncer[s3]'") from None
    for name in SECRET_ENV:
        register_secret(os.environ.get(name))
    kwargs: dict[str, Any] = {"checksum_algorithm": "SHA256"}
    client: dict[str, Any] = {}
    # obstore also reads AWS_* variables of its own (AWS_ENDPOINT, AWS_ALLOW_HTTP,
    # AWS_ALLOW_INVALID_CERTIFICATES): every one that could carry the bytes in clear or unverified is
    # decided here, by the one URL rule, and given explicitly so the environment cannot override it.
    endpoint = endpoint_of(s3)
    client["allow_http"] = False
    client["allow_invalid_certificates"] = False
    if endpoint:
        why = url_refusal(endpoint)
        if why:
            raise ConfigError(f"s3.endpoint_url {why}")
        parts = urlsplit(endpoint)
        if parts.query or parts.username or parts.password:
            raise ConfigError("s3.endpoint_url must not carry a query string or credentials")
        client["allow_http"] = parts.scheme == "http"
        kwargs["endpoint"] = endpoint
    if s3 and s3.region:
        kwargs["region"] = s3.region
    if s3 and s3.object_lock_days:
        # Object Lock needs the retention on the PUT itself and obstore has no per-request header:
        # they go on every request of this store (moto accepts them on every call; S3 reads them on
        # PUT and CreateMultipartUpload).
        until = datetime.now(UTC) + timedelta(days=s3.object_lock_days)
        client["default_headers"] = {
            "x-amz-object-lock-mode": s3.object_lock_mode.upper(),
            "x-amz-object-lock-retain-until-date": until.strftime("%Y-%m-%dT%H:%M:%SZ"),
            # S3 wants Content-MD5 or a named checksum on a PUT with retention: the SHA-256 obstore sends.
            "x-amz-sdk-checksum-algorithm": "SHA256",
        }
    retry_config: dict[str, Any] | None = None
    if retry is not None:
        retry_config = {"max_retries": max(0, retry.attempts - 1),
                        "backoff": {"init_backoff": timedelta(seconds=max(retry.min_wait, 0.01)),
                                    "max_backoff": timedelta(seconds=max(retry.max_wait, 0.01)), "base": 2},
                        "retry_timeout": timedelta(minutes=3)}
    try:
        return S3Store(loc.bucket, prefix=loc.prefix or None, client_options=client or None,
                       retry_config=retry_config, **kwargs)
    except Exception as exc:  # noqa: BLE001 - obstore rejects a bad config with its own errors
        raise ConfigError(scrub(f"object store {loc}: {exc}")) from exc


# -- writing one object --------------------------------------------------------------------------------
class ObjectWriter:
    """One download's object: the writer-like shape of ``AtomicWriter`` (no resume: ``existing_bytes``
    is 0, since an object cannot be appended to)."""

    folder = None  # nothing for the recorder to fsync

    def __init__(self, sink: ObjectSink, key: str, *, expected_size: int | None, replace: bool = True,
                 owner: str | None = None):
        self.sink = sink
        self.key = key
        self.expected_size = expected_size
        self.replace = replace
        self.owner = owner
        self._rx = Received(expected_size)
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._task: asyncio.Future[Any] | None = None
        self._state = "new"

    def existing_bytes(self) -> int:
        return 0

    @property
    def bytes_written(self) -> int:
        return self._rx.count

    async def open(self, offset: int = 0) -> None:
        if self._state != "new":
            raise RuntimeError("ObjectWriter.open() called twice")
        if offset:
            raise ValueError("an object cannot be resumed")
        self._state = "open"

    async def write(self, chunk: bytes) -> None:
        if self._state != "open":
            raise RuntimeError(f"ObjectWriter.write() on a writer that is {self._state}")
        if not chunk:
            return
        try:
            self._rx.add(bytes(chunk))
        except SizeMismatchError:
            await self.abort()
            raise
        if self._task is None:
            if self._rx.held > MULTIPART_THRESHOLD:
                self._start_multipart()
                await self._feed()
        elif self._rx.held >= FEED_BYTES:
            await self._feed()

    def _start_multipart(self) -> None:
        import obstore

        self._queue = asyncio.Queue(maxsize=2)

        async def body() -> Any:
            assert self._queue is not None
            while (piece := await self._queue.get()) is not None:
                yield piece

        # mode="create" would make obstore buffer the whole file for one PUT: a multipart upload
        # overwrites (and becomes visible only when complete).
        self._task = asyncio.ensure_future(obstore.put_async(
            self.sink.store, self.key, body(), attributes=self.sink.attributes(None, self.owner), use_multipart=True,
            chunk_size=PART_SIZE, max_concurrency=PARTS_IN_FLIGHT))

    async def _feed(self, last: bool = False) -> None:
        """Hand the buffered bytes (and, if ``last``, the end) to the upload; raise its error if it died."""
        assert self._queue is not None and self._task is not None
        # Joined in pieces of ~FEED_BYTES, never all at once: the first feed holds the 8 MiB that were
        # buffered before the upload started, and one copy of it all would double that.
        pieces: list[bytes | None] = []
        group: list[bytes] = []
        size = 0
        for chunk in self._rx.chunks:
            group.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:
                pieces.append(b"".join(group))
                group, size = [], 0
        if group:
            pieces.append(b"".join(group))
        self._rx.clear()
        if last:
            pieces.append(None)
        for piece in pieces:
            put = asyncio.ensure_future(self._queue.put(piece))
            done, _ = await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if put not in done:
                put.cancel()
                await self._task_error()

    async def _task_error(self) -> None:
        assert self._task is not None
        try:
            await self._task
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "uploading an object") from exc
        raise StoreUnavailable("object store: the upload ended before its last byte")

    async def commit(self) -> tuple[int, str]:
        """Finish the object (one PUT, or complete the multipart upload); ``(bytes, sha256 hex)``."""
        if self._state != "open":
            raise RuntimeError(f"ObjectWriter.commit() on a writer that is {self._state}")
        try:
            self._rx.check_complete()
            digest = self._rx.sha256
            if self._task is not None:
                await self._feed(last=True)
                try:
                    await self._task
                except Exception as exc:  # noqa: BLE001 - translated
                    raise translate(exc, "completing a multipart upload") from exc
            else:
                await self._put_single(self._rx.take(), digest)
        except BaseException:
            await self.abort()
            raise
        self._state = "committed"
        return self._rx.count, digest

    async def _put_single(self, data: bytes, digest: str) -> None:
        import obstore
        import obstore.exceptions as oe

        attrs = self.sink.attributes(digest, self.owner)
        try:
            await obstore.put_async(self.sink.store, self.key, data, attributes=attrs,
                                    mode="overwrite" if self.replace else "create", use_multipart=False)
            return
        except oe.AlreadyExistsError as exc:
            # A key new to this manifest is taken: the same bytes (a killed run's, or a snapshot that
            # missed them) are ours; so is an object stored for this same file id (an encrypted copy
            # differs on every run: age's file key is random).  Anything else is never replaced.
            there = await self.sink.stored_attributes(self.key)
            if there.get("sha256") == digest:
                return
            if not (self.owner and there.get(OWNER_ATTR) == self.owner):
                raise StoreItemError("object store: the key is taken by another object with different"
                                     " content; it is not replaced") from exc
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "writing an object") from exc
        try:
            await obstore.put_async(self.sink.store, self.key, data, attributes=attrs, mode="overwrite",
                                    use_multipart=False)
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "writing an object") from exc

    async def abort(self, keep_partial: bool = False) -> None:
        """Drop what was received; a multipart upload in progress is cancelled (obstore aborts it)."""
        if self._state in ("committed", "closed"):
            return
        self._state = "closed"
        self._rx.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            try:
                await asyncio.shield(asyncio.wait({task}))
            finally:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: no "never retrieved" warning


# -- presence: what the bucket already holds ------------------------------------------------------------
class ObjectPresence:
    """One target's objects (key -> size) from one listing, for the planner; blocking HEADs for adoption."""

    def __init__(self, sink: ObjectSink, sizes: dict[str, int]):
        self.sink = sink
        self.sizes = sizes

    def size(self, rel: str) -> int | None:
        return self.sizes.get(rel)

    def adopt(self, rel: str, size: int | None) -> str | None:
        """The sha256 of a complete object of the expected size, from its metadata, or None (a multipart
        object has none: it is fetched again and replaced)."""
        if size is None or self.sizes.get(rel) != size:
            return None
        try:
            return self.sink.stored_sha256_sync(rel)
        except Exception:  # noqa: BLE001 - adoption is an optimisation: any doubt means fetch again
            return None

    def partials(self, folder: str) -> set[str]:
        return set()


def target_folder(target: Any) -> str:
    """A target's folder (``rel``'s first two segments), as ``syncer.pull.plan`` lays it out."""
    from syncer.local.names import safe_name

    return f"{target.type}/{safe_name(target.id)}"


# -- the sink -----------------------------------------------------------------------------------------------
class ObjectSink:
    """Backup files as objects under ``s3://bucket/prefix``."""

    kind = "bucket"
    labels_owner = True  # writer(owner=file id): the object's metadata names the file it holds

    def __init__(self, loc: Location, store: Any, s3: S3Config | None = None):
        self.loc = loc
        self.store = store
        self.s3 = s3
        self.started = datetime.now(UTC)

    @classmethod
    def from_config(cls, dest: str, cfg: Config | None) -> ObjectSink:
        loc = Location.parse(dest)
        s3 = cfg.s3 if cfg is not None else None
        return cls(loc, make_store(loc, s3, cfg.retry if cfg is not None else None), s3)

    def __str__(self) -> str:
        return str(self.loc)

    def attributes(self, digest: str | None, owner: str | None = None) -> dict[str, str]:
        attrs: dict[str, str] = {"Content-Type": "application/octet-stream"}
        if self.s3 is not None and self.s3.storage_class:
            attrs["Storage-Class"] = self.s3.storage_class
        if digest:
            attrs["sha256"] = digest
        if owner:
            attrs[OWNER_ATTR] = owner
        return attrs

    async def prepare(self) -> None:
        """Before any download: the bucket exists and these credentials may list it (ConfigError or
        StoreAccessError with the store's own words otherwise).  (A killed run's incomplete uploads
        are aborted by ``syncer.store.snapshot`` before the manifest is opened.)"""
        import obstore

        try:
            stream = obstore.list(self.store, "_syncer", chunk_size=1)
            async for _page in stream:
                break
        except Exception as exc:  # noqa: BLE001 - translated
            err = translate(exc, f"cannot use {self.loc}")
            raise err from exc

    async def presence(self, target: Any) -> ObjectPresence:
        """One listing of the target's folder: every object's size."""
        import obstore

        folder = target_folder(target)
        sizes: dict[str, int] = {}
        try:
            async for page in obstore.list(self.store, folder, chunk_size=1000):
                for meta in page:
                    sizes[meta["path"]] = meta["size"]
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "listing a target's objects") from exc
        return ObjectPresence(self, sizes)

    def writer(self, rel: str, *, expected_size: int | None, replace: bool = True,
               owner: str | None = None) -> ObjectWriter:
        """A writer for the object at ``rel``; ``owner`` (the file id) goes into its metadata."""
        return ObjectWriter(self, rel, expected_size=expected_size, replace=replace, owner=owner)

    async def remove(self, rel: str) -> None:
        """Delete the object at ``rel`` (one stored the other way, replaced); gone already is fine."""
        import obstore
        import obstore.exceptions as oe

        try:
            await obstore.delete_async(self.store, rel)
        except (oe.NotFoundError, FileNotFoundError):
            return
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "deleting a replaced object") from exc

    async def stored_attributes(self, key: str) -> dict[str, Any]:
        import obstore

        try:
            got = await obstore.get_async(self.store, key, options={"head": True})
        except Exception as exc:  # noqa: BLE001 - translated
            raise translate(exc, "reading an object's metadata") from exc
        return dict(got.attributes)

    async def stored_sha256(self, key: str) -> str | None:
        return (await self.stored_attributes(key)).get("sha256")

    def stored_sha256_sync(self, key: str) -> str | None:
        import obstore

        return obstore.get(self.store, key, options={"head": True}).attributes.get("sha256")

    async def close(self) -> None:
        return None
