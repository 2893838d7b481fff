"""What the client hands back: a target's ``Listing`` and an open ``Download`` (with the parsing of both).

Imported by :mod:`syncer.api.client` (and re-exported there); ``RangeNotServed`` also by :mod:`syncer.pull.segments`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from syncer.api.translate import payload_reason, safe_cause, translate_exc
from syncer.errors import ProtocolError, TruncatedBody
from syncer.models import RemoteFile, Target
from syncer.redact import redact_link

log = logging.getLogger("syncer.client")

CHUNK_SIZE = 256 * 1024
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


# -- results -----------------------------------------------------------------------------------------

@dataclass
class Listing:
    """What ``GET /files`` gave for one target.

    ``files``: the file objects that parsed (duplicates of an id dropped, the first kept).
    ``bad_items``: one secret-free line per item that could not be parsed (e.g. ``item 3: file object:
    required field 'id' is missing``).  When it is not empty the listing is incomplete: a caller must
    not conclude that a file it does not see was deleted remotely (see ``complete``).
    ``target_missing``: the server answered 404 (contract: an unknown target has no files).
    Iterating, ``len()`` and indexing act on ``files``.
    """

    files: list[RemoteFile] = field(default_factory=list)
    bad_items: list[str] = field(default_factory=list)
    target_missing: bool = False

    @property
    def complete(self) -> bool:
        return not self.bad_items

    def __iter__(self) -> Iterator[RemoteFile]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> RemoteFile:
        return self.files[index]


class Download:
    """One answer to a download link, open for reading.  Get it from ``FilesClient.download``.

    ``status``: 200 or 206.  ``offset``: where the served bytes start in the file: the requested offset
    after a matching 206, else 0 (the caller must then start its file over).  ``total_size``: the whole
    file's size (``Content-Range`` total on a 206, ``Content-Length`` on a 200), None when not announced.
    ``length``: how many bytes this body should carry, None when not announced.  ``bytes_read``: how
    many have been read so far.
    """

    __slots__ = ("status", "offset", "total_size", "length", "content_type", "bytes_read", "_resp", "_url")

    def __init__(self, resp: aiohttp.ClientResponse, url: str, *, offset: int, total_size: int | None,
                 length: int | None) -> None:
        self._resp = resp
        self._url = redact_link(url)  # for errors only: where the link points, not its path or signature
        self.status = resp.status
        self.offset = offset
        self.total_size = total_size
        self.length = length
        self.content_type = resp.headers.get("Content-Type", "")
        self.bytes_read = 0

    def __repr__(self) -> str:
        return (f"<Download {self._url} status={self.status} offset={self.offset} "
                f"total_size={self.total_size} bytes_read={self.bytes_read}>")

    async def iter_chunks(self, chunk_size: int = CHUNK_SIZE, *, limit: int | None = None) -> AsyncIterator[bytes]:
        """Yield the body in pieces of at most ``chunk_size`` bytes.

        ``limit``: the most bytes the whole file may have (``offset`` included), typically the size the
        listing announced, plus any slack the caller allows.  Receiving more, or an announced size over
        it, raises ``ProtocolError``: an endless body stops.  A body that ends before its announced
        length raises ``TruncatedBody``; a connection cut mid-body ``TruncatedBody``/``ConnectionFailed``;
        a read timeout ``TimeoutError_``.  All of these are transient: the caller retries the transfer.
        """
        if limit is not None and self.total_size is not None and self.total_size > limit:
            raise ProtocolError(f"the server announced {self.total_size} bytes, more than the expected {limit}",
                                url=self._url)
        allowed = None if limit is None else limit - self.offset
        read = self._resp.content.read
        while True:
            try:
                chunk = await read(chunk_size)
            except aiohttp.ClientPayloadError as exc:
                of = f" of {self.length}" if self.length is not None else ""
                raise TruncatedBody(f"the body was cut short after {self.bytes_read}{of} bytes "
                                    f"({payload_reason(exc)})", url=self._url) from safe_cause(exc)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise translate_exc(exc, self._url, in_body=True) from safe_cause(exc)
            if not chunk:
                break
            self.bytes_read += len(chunk)
            if allowed is not None and self.bytes_read > allowed:
                raise ProtocolError(f"the body goes on past the expected {limit} bytes", url=self._url)
            yield chunk
        if self.length is not None and self.bytes_read != self.length:
            if self.bytes_read < self.length:
                raise TruncatedBody(f"the body ended after {self.bytes_read} of {self.length} bytes",
                                    url=self._url)
            raise ProtocolError(f"the body has {self.bytes_read} bytes, not the announced {self.length}",
                                url=self._url)

    async def read(self, *, limit: int | None = None) -> bytes:
        """The whole (remaining) body in memory: for small files and tests."""
        return b"".join([chunk async for chunk in self.iter_chunks(limit=limit)])


class RangeNotServed(ProtocolError):
    """A ranged request (``download_range``) was not answered with the 206 asked for: the server ignores
    Range (a whole 200), or its 206 does not match (another start, end or total).  The caller falls back
    to one whole download; nothing of this answer was read."""


def ranged_download(resp: aiohttp.ClientResponse, url: str, start: int, end: int, total: int) -> Download:
    """The answer to ``Range: bytes=start-end`` of a ``total``-byte file as a ``Download``, when it is a
    206 whose ``Content-Range`` is exactly that (and whose length, when given, matches, uncompressed);
    ``RangeNotServed`` for a 200, 203, 416 or any other 206.  Other statuses are the caller's."""
    served = content_range(resp.headers.get("Content-Range", "")) if resp.status == 206 else None
    encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    clen = resp.content_length
    if served != (start, end, total) or encoded or (clen is not None and clen != end - start + 1):
        other = " with another range" if resp.status == 206 else ""
        raise RangeNotServed(f"a ranged request was answered {resp.status}{other}", url=redact_link(url))
    return Download(resp, url, offset=start, total_size=total, length=end - start + 1)


def parse_listing(items: list[Any], target: Target) -> Listing:
    listing = Listing()
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            rf = RemoteFile.from_api(item)
        except ProtocolError as exc:
            listing.bad_items.append(f"item {i}{_item_label(item)}: {exc}")
            continue
        if rf.id in seen:
            log.debug("listing of %s: duplicate file id %s dropped", target, rf.id)
            continue
        seen.add(rf.id)
        listing.files.append(rf)
    return listing


def _item_label(item: Any) -> str:
    """`` (file <id>)`` for a listing item whose id is usable, so a bad item is named by its file id;
    else nothing.  Bounded and printable: the id comes from the server."""
    file_id = item.get("id") if isinstance(item, dict) else None
    if isinstance(file_id, bool) or not isinstance(file_id, (str, int)):
        return ""
    text = str(file_id)
    if not text or not text.isprintable() or len(text) > 100:
        return ""
    return f" (file {text})"


def content_range(value: str) -> tuple[int, int, int | None] | None:
    """``bytes START-END/TOTAL`` as (start, end, total or None); None when it does not parse."""
    m = _CONTENT_RANGE.match(value)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return start, end, total
