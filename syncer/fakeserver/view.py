"""The fake server's download link handler, `/files/view/<id>` (part of `syncer.fakeserver`).

`ViewMixin` is inherited by `FakeServer`: it checks the link's signature and age, answers thumbnails,
honours `Range`, sends bodies from memory or disk, and applies the body faults (cut mid-body, wrong
size, endless body, redirect to another host). It is reached through `FakeServer._endpoint`, which
looks `_view` up by name on each request, so a test may replace `srv._view` on a running server.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from syncer.fakeserver import seed as seedlib
from syncer.fakeserver.http import CHUNK, ApiRefusal, error_response, reset_connection
from syncer.fakeserver.store import FileRec

_ENDLESS_MAX = 2**30  # an "endless" body still stops after 1 GiB
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")
_TIME_RE = re.compile(r"[0-9]{1,12}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class ViewMixin:
    """The download link of a `FakeServer`: signed, expiring, ranged, and faulty on demand."""

    async def _view(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        q = request.query
        stamp = q.get("time", "")
        if not _TIME_RE.fullmatch(stamp):  # int() would also take "1_7e9" or " +17": not the link we made
            raise ApiRefusal(403, "invalid link")
        issued = int(stamp)
        if self._sign(file_id, issued) != q.get("auth_code"):
            raise ApiRefusal(403, "invalid link")
        if self.clock() - (issued + 1) > self.link_ttl:
            raise ApiRefusal(403, "link expired")
        rec = self._files.get(file_id)
        if rec is None:
            raise ApiRefusal(404, "file not found")
        if self._draw("redirect_other_host"):
            return web.Response(status=302, headers={"Location": f"http://127.0.0.2:{self.port}{request.path_qs}"})
        size_param = q.get("size")
        if size_param and rec.ext in seedlib.IMAGE_EXTS and (m := _SIZE_RE.fullmatch(size_param)):
            png = seedlib.make_png(int(m[1]), int(m[2]))
            self.counters["view_bytes"] += len(png)
            return web.Response(body=png, content_type="image/png")
        headers = {"Content-Type": seedlib.content_type(rec.ext), "Content-Disposition": rec.disposition}
        if self._draw("endless_body"):
            return await self._send_endless(request, headers)
        if self._draw("wrong_size"):
            return await self._send_file(request, rec, 0, rec.size, 200, headers, None, extra=b"\0")
        start, end, status = 0, rec.size, 200
        if self.range_support:
            headers["Accept-Ranges"] = "bytes"
            wanted = request.headers.get("Range")
            if wanted and rec.size > 0:
                span = _parse_range(wanted, rec.size)
                if span == (-1, -1):
                    return error_response(416, "range not satisfiable", {"Content-Range": f"bytes */{rec.size}"})
                if span is not None:
                    start, end, status = span[0], span[1], 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{rec.size}"
        length = end - start
        cut = None
        if length > 0:
            if self._draw("reset_mid_body"):
                cut = "reset"
            elif self._draw("truncate_body"):
                cut = "truncate"
        if cut is None and rec.cached is not None and not self.faults.conn_rate_mbps:
            self.counters["view_bytes"] += length
            self.served[rec.id] += length
            return web.Response(status=status, body=rec.cached[start:end], headers=headers)
        return await self._send_file(request, rec, start, length, status, headers, cut)

    async def _send_file(
        self, request: web.Request, rec: FileRec, start: int, length: int, status: int,
        headers: dict[str, str], cut: str | None, extra: bytes = b"",
    ) -> web.StreamResponse:  # fmt: skip
        """Stream `length` bytes from `start` in 256 KiB chunks, then `extra` (for wrong_size);
        `cut` stops halfway, with a reset or a clean close."""
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length + len(extra)
        await resp.prepare(request)
        to_send = length // 2 if cut else length
        sent = 0
        # The per-connection cap: each answer (one at a time on a connection) is paced to the rate.
        rate = self.faults.conn_rate_mbps * 1e6
        began = loop_time()
        f = None if rec.cached is not None else await asyncio.to_thread(open, rec.path, "rb")
        try:
            if f is not None and start:
                await asyncio.to_thread(f.seek, start)
            while sent < to_send:
                n = min(CHUNK, to_send - sent)
                if f is None:
                    chunk = rec.cached[start + sent : start + sent + n]  # type: ignore[index]
                else:
                    chunk = await asyncio.to_thread(f.read, n)
                if not chunk:
                    break
                if rate > 0:  # a chunk leaves no earlier than the rate allows for it
                    ahead = began + (sent + len(chunk)) / rate - loop_time()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                self.served[rec.id] += len(chunk)  # counted as it leaves: final once the client has it
                await resp.write(chunk)
                sent += len(chunk)
                self.counters["view_bytes"] += len(chunk)
            if extra:
                await resp.write(extra)
                self.counters["view_bytes"] += len(extra)
        except ConnectionError:
            return resp  # the client went away
        finally:
            if f is not None:
                await asyncio.to_thread(f.close)
        if cut == "reset":
            reset_connection(request)
        elif cut == "truncate" and request.transport is not None:
            request.transport.close()  # flushes what was written, then FIN: a short body
        return resp

    async def _send_endless(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"\0" * CHUNK
        sent = 0
        try:
            while sent < _ENDLESS_MAX:
                await resp.write(chunk)
                sent += len(chunk)
                self.counters["view_bytes"] += len(chunk)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client gave up: that is the expected end
        return resp


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=` range as (start, end exclusive); None to ignore it; (-1, -1) if unsatisfiable."""
    m = _RANGE_RE.fullmatch(value.strip())
    if m is None or (not m[1] and not m[2]):
        return None  # several ranges or another unit: send it all
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        return (-1, -1) if n == 0 else (max(0, size - n), size)
    start = int(m[1])
    end = int(m[2]) + 1 if m[2] else size
    if m[2] and end <= start:
        return None  # syntactically invalid (last < first): ignored, as RFC 9110 says
    if start >= size:
        return (-1, -1)
    return start, min(end, size)
