"""The fake server's `/api_v3` handlers: list, info, rename, delete and upload (part of `syncer.fakeserver`).

`ApiMixin` is inherited by `FakeServer`; its handlers are reached through `FakeServer._endpoint`, which
looks them up by name on each request (so a test may replace e.g. `srv._list` on a running server).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from syncer.fakeserver import seed as seedlib
from syncer.fakeserver.http import CHUNK, ApiRefusal, ok_response, reset_connection
from syncer.fakeserver.store import CACHE_FILE_MAX, FileRec

_UPLOAD_FLUSH = 1 << 20
_HTML_200 = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in.</body></html>"
_GARBAGE_JSON = b'{"data": [{"id": "62ce0306-bd68-'


class ApiMixin:
    """The `/api_v3` side of a `FakeServer`: who is calling, which file, and the JSON handlers."""

    # ---- callers, files and their JSON ---------------------------------------------------------

    def _caller(self, request: web.Request) -> str | None:
        """The user a token belongs to, or None for the account API key; 401 otherwise."""
        code = request.headers.get("X-AccountCode")
        if code is not None and code != self.account_code:
            raise ApiRefusal(401, "unknown account code")
        token = request.headers.get("X-ApiToken")
        if not token:
            raise ApiRefusal(401, "missing X-ApiToken")
        if token == self.api_key:  # a test server: constant-time comparison buys nothing here
            return None
        user = self._token_users.get(token)
        if user is None:
            # Someone may have edited user_tokens directly: look there before refusing.
            user = next((u for u, t in self.user_tokens.items() if t == token), None)
            if user is None:
                raise ApiRefusal(401, "invalid token")
        return user

    def _file_for(self, request: web.Request, caller: str | None, *, reading: bool = False) -> FileRec:
        rec = self._files.get(request.match_info["id"])
        if rec is None:
            raise ApiRefusal(404, "file not found")
        if caller is not None and caller != rec.owner and not (rec.target_type == "user" and rec.target_id == caller):
            if not (reading and caller in rec.shared_with):
                raise ApiRefusal(403, "not your file")
        return rec

    def _hostile_get(self) -> web.Response | None:
        if self._draw("garbage_json"):
            return web.Response(body=_GARBAGE_JSON, content_type="application/json")
        if self._draw("html_200"):
            return web.Response(text=_HTML_200, content_type="text/html")
        return None

    def _file_obj(self, rec: FileRec) -> dict[str, Any]:
        return {
            "id": rec.id, "name": rec.name, "size": rec.size, "ext": rec.ext, "fullpath": self.view_url(rec.id),
            "meta": {"category": rec.category, "target": dict(rec.meta_target),
                     "account": {"code": self.account_code}, "visible": True},
            "creator": self._creator(rec.owner), "created": rec.created, "modified": rec.modified,
            "is_deletable": rec.deletable,
        }  # fmt: skip

    def _creator(self, person: str) -> dict[str, Any]:
        return self._people.get(person) or {
            "id": person, "username": f"user{person}", "email": f"user{person}@clinic.example",
            "full_name": f"User {person}", "type": 200,
        }  # fmt: skip

    # ---- /api_v3 handlers ----------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        ttype, tid, category = q.get("target_type"), q.get("target_id"), q.get("category")
        if ttype not in ("user", "visit") or not tid:
            raise ApiRefusal(400, "target_type (user|visit) and target_id are required")
        if category is not None and category not in seedlib.CATEGORIES:
            raise ApiRefusal(400, "unknown category")
        if caller is not None and (ttype != "user" or tid != caller):
            raise ApiRefusal(403, "a user token may list only its own files")
        ids = list(self._by_target.get((ttype, tid), ()))
        shared = q.get("include_shared")
        if ttype == "user" and shared is not None and shared.lower() not in ("0", "false", "no"):
            ids += [fid for fid in self._shared_to.get(tid, ()) if self._files[fid].category == "user_document"]
        recs = [self._files[fid] for fid in ids]
        if category is not None:
            recs = [r for r in recs if r.category == category]
        return self._hostile_get() or ok_response([self._file_obj(r) for r in recs])

    async def _info(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request), reading=True)
        return self._hostile_get() or ok_response(self._file_obj(rec))

    async def _rename(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request))
        try:
            form = await request.post()  # urlencoded or multipart: the vendor's own example mixes them
        except ValueError as exc:
            raise ApiRefusal(400, "unreadable form") from exc
        name = form.get("name")
        if not isinstance(name, str) or not name:
            raise ApiRefusal(400, "form field 'name' is required")
        self.rename_file(rec.id, name)
        return ok_response(self._file_obj(rec))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request))
        if not rec.deletable:
            raise ApiRefusal(403, "file is not deletable")
        self._forget(rec.id)
        await asyncio.to_thread(rec.path.unlink, True)
        return ok_response(True)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            raise ApiRefusal(403, "only a user token can upload")
        if not request.content_type.startswith("multipart/"):
            raise ApiRefusal(400, "multipart/form-data expected")
        category: str | None = None
        got: tuple[Path, str, int, str, bytes | None] | None = None
        try:
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue  # a nested multipart: not something this API takes
                if part.name == "meta.category":
                    category = (await part.read_chunk(1024)).decode("utf-8", "replace").strip()
                elif part.name == "file" and got is None:
                    got = await self._receive(part)
        except (ValueError, AssertionError) as exc:  # malformed multipart
            if got is not None:
                await asyncio.to_thread(got[0].unlink, True)
            raise ApiRefusal(400, "malformed multipart body") from exc
        if got is None:
            raise ApiRefusal(400, "form field 'file' is required")
        tmp, name, size, sha, data = got
        if category not in seedlib.CATEGORIES:
            await asyncio.to_thread(tmp.unlink, True)
            raise ApiRefusal(400, "meta.category must be one of " + ", ".join(seedlib.CATEGORIES))
        file_id = seedlib.new_uuid(self._rng)
        path = self.data_dir / file_id
        await asyncio.to_thread(os.replace, tmp, path)
        now = int(self.clock())
        rec = FileRec(
            id=file_id, name=name, size=size, ext=seedlib.ext_of(name), category=category, target_type="user",
            target_id=caller, meta_target={"id": caller, "type": "user"}, owner=caller, created=now,
            modified=now, deletable=True, path=path, sha256=sha, disposition=seedlib.content_disposition(name),
        )  # fmt: skip
        self._remember(rec, data)
        if self._draw("store_then_drop"):
            reset_connection(request)
        return ok_response(self._file_obj(rec))

    async def _receive(self, part: BodyPartReader) -> tuple[Path, str, int, str, bytes | None]:
        """Stream an uploaded part to a temp file, counting; 413 as soon as it passes the limit."""
        name = part.filename or ""
        tmp = self.data_dir / f".upload-{os.urandom(8).hex()}"
        f = await asyncio.to_thread(open, tmp, "wb")
        h = hashlib.sha256()
        size = 0
        pending = bytearray()
        small = bytearray()  # the whole body while it is small enough to cache
        try:
            while chunk := await part.read_chunk(CHUNK):
                size += len(chunk)
                if size > self.max_upload_bytes:
                    # Named, as real servers often do: the client must keep the name out of its logs.
                    raise ApiRefusal(413, f"{name}: file larger than {self.max_upload_bytes} bytes")
                h.update(chunk)
                pending += chunk
                if size <= CACHE_FILE_MAX:
                    small += chunk
                if len(pending) >= _UPLOAD_FLUSH:
                    await asyncio.to_thread(f.write, bytes(pending))
                    pending.clear()
            if pending:
                await asyncio.to_thread(f.write, bytes(pending))
        except BaseException:
            await asyncio.to_thread(f.close)
            await asyncio.to_thread(tmp.unlink, True)
            raise
        await asyncio.to_thread(f.close)
        return tmp, name, size, h.hexdigest(), bytes(small) if size <= CACHE_FILE_MAX else None
