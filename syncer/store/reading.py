"""Reading one object back, through the object sink's store with obstore's blocking API: for callers in
a thread (restore's reader of a bucket backup, ``verify --decrypt`` of one).  Never to disk."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncer.store.s3 import ObjectSink

PIECE = 1 << 20   # the store hands over at least this much at a time


class ObjectReader:
    """One object's bytes through the store's blocking API (for a caller in a thread: restore's reader,
    verify's decryption): as chunks, or as a file-like (``read``) for pyrage.  ``etag``: read only that
    version (the read fails if the object changed since); else the one read is remembered in ``etag``."""

    def __init__(self, sink: ObjectSink, key: str, etag: str | None = None):
        self.sink = sink
        self.key = key
        self.etag = etag
        self._it: Any = None
        self._buf = memoryview(b"")

    def _open(self) -> Any:
        import obstore

        options: dict[str, Any] = {"if_match": self.etag} if self.etag else {}
        got = obstore.get(self.sink.store, self.key, options=options)
        if self.etag is None:
            self.etag = got.meta.get("e_tag")
        return iter(got.stream(min_chunk_size=PIECE))

    def chunks(self) -> Any:
        for chunk in self._open():
            yield bytes(chunk)

    def read(self, n: int = -1) -> bytes:
        if self._it is None:
            self._it = self._open()
        while not self._buf:
            try:
                self._buf = memoryview(bytes(next(self._it)))
            except StopIteration:
                return b""
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)
