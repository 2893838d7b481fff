"""The built-in Files API (v3) server: an aiohttp app exact to ../shared/vsee-files-api.md.

Used by the tests, `syncer demo` and the benchmarks. It seeds users, visits and files deterministically
from `seed`, and can be told to misbehave (errors, rate limits, cut bodies, lost answers) at chosen
rates through `Faults`.

Decisions this server makes where the contract leaves a choice:
- An `X-AccountCode` that differs from the account's code is 401 (bad credentials, like a bad token).
- `Retry-After` is whole seconds: `str(int(retry_after))` when `retry_after >= 1`, else "0".
- A view link carries `time` = the issue time floored to whole seconds, and is valid while
  `now - (time + 1) <= link_ttl`: at least `link_ttl` seconds, less than `link_ttl + 1`. Rounding the
  other way would let a link die a moment after it was issued and set off refresh storms.
- Body faults (`reset_mid_body`, `truncate_body`) apply only to non-empty bodies: there is nothing
  to cut in an empty one. `wrong_size` ignores `Range` and sends the whole file plus one byte.
- Upload: every category targets the uploading user (no visit can be named in the request).
  An empty `name` on rename is 400, as is a missing one. An unknown `category` on a list is 400.
- Seeded intake attachments and consents are not deletable; documents and avatars are.
- `redirect_other_host` points at 127.0.0.2 on the same port, where nothing listens (we bind
  127.0.0.1): a client that follows it gets a connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import random
import re
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from syncer import fakeserver_seed as seedlib

__all__ = ["Faults", "FakeServer", "run_blocking", "serve_forever", "main"]

_CHUNK = 256 * 1024
_CACHE_FILE_MAX = 256 * 1024  # files up to this size are also kept in memory: views skip the disk
_CACHE_TOTAL_MAX = 256 * 2**20
_ENDLESS_MAX = 2**30  # an "endless" body still stops after 1 GiB
_UPLOAD_FLUSH = 1 << 20
_SIZE_RE = re.compile(r"(\d{1,5})x(\d{1,5})")
_TIME_RE = re.compile(r"[0-9]{1,12}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_HTML_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    "<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"
)
_HTML_200 = "<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in.</body></html>"
_GARBAGE_JSON = b'{"data": [{"id": "62ce0306-bd68-'
_GENERAL_FAULTS = ("error_500", "error_503_html", "error_429", "error_429_no_header")


@dataclass
class Faults:
    """Fault rates: probabilities 0..1, drawn per request of the kinds named."""

    error_500: float = 0.0  # any /api_v3 call and view: 500 with a JSON error body
    error_503_html: float = 0.0  # 503 with an HTML body (a proxy page)
    error_429: float = 0.0  # 429 with Retry-After (see retry_after)
    error_429_no_header: float = 0.0  # 429 without Retry-After
    retry_after: float = 0.05  # Retry-After sent: whole seconds, "0" when below 1
    reset_mid_body: float = 0.0  # view: headers and about half the body, then a TCP reset
    truncate_body: float = 0.0  # view: Content-Length N, half of it sent, then a clean close
    store_then_drop: float = 0.0  # POST /files: store the file, then drop the connection unanswered
    latency_ms: float = 0.0  # added to every request
    # hostile-server modes
    garbage_json: float = 0.0  # /api_v3 GET: 200 with a body that is not JSON
    html_200: float = 0.0  # /api_v3 GET: 200 with an HTML body
    wrong_size: float = 0.0  # view: the whole file plus one byte, Content-Length matching what is sent
    endless_body: float = 0.0  # view: a chunked body that goes on until the client leaves (max 1 GiB)
    redirect_other_host: float = 0.0  # view: 302 to http://127.0.0.2:<port>/... (another host)


@dataclass(slots=True)
class _Rec:
    """One stored file. `path` holds its bytes; `cached` too when small."""

    id: str
    name: str
    size: int
    ext: str
    category: str
    target_type: str
    target_id: str
    meta_target: dict[str, str]
    owner: str
    created: int
    modified: int
    deletable: bool
    path: Path
    sha256: str
    shared_with: set[str] = field(default_factory=set)
    cached: bytes | None = None
    disposition: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "size": self.size, "ext": self.ext,
            "category": self.category, "target_type": self.target_type, "target_id": self.target_id,
            "meta_target": dict(self.meta_target), "owner": self.owner, "created": self.created,
            "modified": self.modified, "deletable": self.deletable, "path": str(self.path),
            "sha256": self.sha256, "shared_with": set(self.shared_with),
        }  # fmt: skip


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": {"code": status, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def _ok(data: Any) -> web.Response:
    return web.Response(text=json.dumps({"data": data}), content_type="application/json")


class FakeServer:
    """An in-process Files API server on loopback. Use `async with`, or `run_in_thread()` from sync code."""

    def __init__(
        self,
        *,
        seed: int = 0,
        users: int = 0,
        files_per_user: int = 0,
        visits: int = 0,
        files_per_visit: int = 0,
        hostile_names: bool = False,
        sizes: tuple[int, ...] | None = None,
        link_ttl: float = 3600,
        range_support: bool = True,
        max_upload_bytes: int = 100 * 2**20,
        faults: Faults | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "/clinic",
        account_code: str = "democlinic",
        api_key: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._rng = random.Random(f"syncer-fakeserver:{seed}")  # ids, names, sizes, tokens
        self._fault_rng = random.Random(f"syncer-fakeserver-faults:{seed}")  # reproducible faults
        self.faults = faults if faults is not None else Faults()
        self.link_ttl = link_ttl
        self.range_support = range_support
        self.max_upload_bytes = max_upload_bytes
        self.host = host
        self.port = port
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.account_code = account_code
        self.clock = clock
        self.counters: collections.Counter[str] = collections.Counter()
        self.api_key = api_key if api_key is not None else seedlib.hex_token(self._rng)
        self._secret = self._rng.randbytes(32)
        self.users: list[str] = []
        self.visits: list[str] = []
        self.user_tokens: dict[str, str] = {}
        self._token_users: dict[str, str] = {}
        self._people: dict[str, dict[str, Any]] = {}
        self._intake_of: dict[str, str] = {}
        self._files: dict[str, _Rec] = {}
        self._by_target: dict[tuple[str, str], list[str]] = {}
        self._shared_to: dict[str, list[str]] = {}
        self._cache_bytes = 0
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="syncer-fakeserver-")
            data_dir = self._tmpdir.name
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._provider = seedlib.numeric_id(self._rng, 8)  # the clinician who adds intake attachments
        self._people[self._provider] = {
            "id": self._provider, "username": f"provider{self._provider}",
            "email": f"provider{self._provider}@clinic.example", "full_name": "Dr. Demo Provider", "type": 200,
        }  # fmt: skip
        self._runner: web.AppRunner | None = None
        self._seed(users, files_per_user, visits, files_per_visit, hostile_names, sizes)

    # ---- seeding -------------------------------------------------------------------------------

    def _seed(
        self, users: int, per_user: int, visits: int, per_visit: int, hostile: bool, sizes: tuple[int, ...] | None
    ) -> None:
        rng = self._rng
        for _ in range(users):
            self.add_user()
        for _ in range(visits):
            self.add_visit()
        index = 0  # over all seeded files, so `sizes` cycles across them
        targets = [("user", u) for u in self.users] + [("visit", v) for v in self.visits]
        for t_index, (ttype, tid) in enumerate(targets):
            count = per_user if ttype == "user" else per_visit
            for j in range(count):
                created = seedlib.created_time(rng)
                if ttype == "visit":
                    category, kind, ext = "intake_attachment", "attachment", seedlib.plain_ext(rng)
                elif j == 0 and t_index % 2 == 0:
                    category, kind, ext = "user_avatar", "avatar", "png"
                elif j % 5 == 4:
                    category, kind, ext = "user_consent", "consent", "pdf"
                else:
                    category, kind, ext = "user_document", "document", seedlib.plain_ext(rng)
                name = seedlib.plain_name(created, j + 1, ext, kind)
                if hostile and t_index > 0 and j == count - 1:
                    name = seedlib.sprinkle_name(t_index - 1)
                deletable = category in ("user_document", "user_avatar")
                size = seedlib.pick_size(rng, sizes, index)
                index += 1
                self._add(ttype, tid, name, None, size, category, created, None, deletable, rng.getrandbits(64))
            if hostile and t_index == 0:
                # Every hostile name in one target, so the NFC/NFD twins and duplicates share it.
                for name in seedlib.HOSTILE_NAMES:
                    category = "user_document" if ttype == "user" else "intake_attachment"
                    size = seedlib.pick_size(rng, sizes, index)
                    index += 1
                    created = seedlib.created_time(rng)
                    self._add(ttype, tid, name, None, size, category, created, None, True, rng.getrandbits(64))
        if len(self.users) >= 2:
            for i in range(0, len(self.users), 3):
                owner, other = self.users[i], self.users[(i + 1) % len(self.users)]
                for fid in self._by_target.get(("user", owner), []):
                    if self._files[fid].category == "user_document":
                        self.share_file(fid, other)
                        break

    def add_user(self, user_id: str | None = None) -> str:
        """Register a user (a 10-digit id unless given) with its own token; returns the id."""
        if user_id is None:
            user_id = seedlib.numeric_id(self._rng, 10)
            while user_id in self.user_tokens:
                user_id = seedlib.numeric_id(self._rng, 10)
        if user_id in self.user_tokens:
            return user_id
        token = seedlib.hex_token(self._rng)
        self.users.append(user_id)
        self.user_tokens[user_id] = token
        self._token_users[token] = user_id
        n = len(self.users)
        self._people[user_id] = {
            "id": user_id, "username": f"patient{user_id}", "email": f"patient{n}@clinic.example",
            "full_name": f"Patient {n}", "type": 200,
        }  # fmt: skip
        return user_id

    def add_visit(self, visit_id: str | None = None) -> str:
        """Register a visit (a numeric id unless given) with its intake; returns the id."""
        if visit_id is None:
            visit_id = seedlib.numeric_id(self._rng, 8)
            while visit_id in self._intake_of:
                visit_id = seedlib.numeric_id(self._rng, 8)
        if visit_id not in self._intake_of:
            self.visits.append(visit_id)
            self._intake_of[visit_id] = seedlib.new_uuid(self._rng)
        return visit_id

    def add_file(
        self,
        target_type: str,
        target_id: str,
        name: str,
        data: bytes | None = None,
        *,
        size: int | None = None,
        category: str | None = None,
        created: int | None = None,
        owner: str | None = None,
        deletable: bool = True,
    ) -> dict[str, Any]:
        """Store a file and return its record. `data=` writes those bytes; `size=` writes that many
        deterministic pseudo-random bytes, in chunks (GB sizes work). Unknown targets are registered."""
        if data is not None and size is not None and size != len(data):
            raise ValueError("give data= or size=, not both")
        if data is None and size is None:
            data = b""
        return self._add(target_type, target_id, name, data, size, category, created, owner, deletable, None).as_dict()

    def _add(
        self,
        target_type: str,
        target_id: str,
        name: str,
        data: bytes | None,
        size: int | None,
        category: str | None,
        created: int | None,
        owner: str | None,
        deletable: bool,
        content_seed: int | None,
    ) -> _Rec:
        if target_type == "user":
            self.add_user(target_id)
            meta_target = {"id": target_id, "type": "user"}
        elif target_type == "visit":
            self.add_visit(target_id)
            meta_target = {"id": self._intake_of[target_id], "type": "intake"}
        else:
            raise ValueError(f"target_type must be 'user' or 'visit', not {target_type!r}")
        category = category or ("user_document" if target_type == "user" else "intake_attachment")
        if category not in seedlib.CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        file_id = seedlib.new_uuid(self._rng)
        path = self.data_dir / file_id
        if data is None:
            seed = content_seed if content_seed is not None else seedlib.content_seed_for(file_id)
            chunks = seedlib.iter_content(seed, size or 0)
            if (size or 0) <= _CACHE_FILE_MAX:
                data = b"".join(chunks)
        written, sha = seedlib.write_file(path, [bytes(data)] if data is not None else chunks)
        if created is None:
            created = int(self.clock())
        owner = owner or (target_id if target_type == "user" else self._provider)
        rec = _Rec(
            id=file_id, name=name, size=written, ext=seedlib.ext_of(name), category=category,
            target_type=target_type, target_id=target_id, meta_target=meta_target, owner=owner,
            created=created, modified=created, deletable=deletable, path=path, sha256=sha,
            disposition=seedlib.content_disposition(name),
        )  # fmt: skip
        self._remember(rec, bytes(data) if data is not None else None)
        return rec

    def _remember(self, rec: _Rec, data: bytes | None) -> None:
        if data is not None and len(data) <= _CACHE_FILE_MAX and self._cache_bytes + len(data) <= _CACHE_TOTAL_MAX:
            rec.cached = data
            self._cache_bytes += len(data)
        self._files[rec.id] = rec
        self._by_target.setdefault((rec.target_type, rec.target_id), []).append(rec.id)

    # ---- server-side inspection and changes (no HTTP) ------------------------------------------

    def files(self) -> list[dict[str, Any]]:
        """Every stored record (copies)."""
        return [rec.as_dict() for rec in list(self._files.values())]

    def file_bytes(self, file_id: str) -> bytes:
        rec = self._files[file_id]
        return rec.cached if rec.cached is not None else rec.path.read_bytes()

    def file_path(self, file_id: str) -> Path:
        return self._files[file_id].path

    def token_for(self, user_id: str) -> str:
        return self.user_tokens[user_id]

    def share_file(self, file_id: str, user_id: str) -> None:
        """Share a file with a user: it then shows in that user's `include_shared` listing."""
        rec = self._files[file_id]
        if user_id not in rec.shared_with:
            rec.shared_with.add(user_id)
            self._shared_to.setdefault(user_id, []).append(file_id)

    def rename_file(self, file_id: str, new_name: str) -> None:
        """Rename as the service would: `ext` stays, `modified` moves."""
        rec = self._files[file_id]
        rec.name = new_name
        rec.disposition = seedlib.content_disposition(new_name)
        rec.modified = int(self.clock())

    def delete_file(self, file_id: str) -> None:
        self._forget(file_id).path.unlink(missing_ok=True)

    def _forget(self, file_id: str) -> _Rec:
        rec = self._files.pop(file_id)
        self._by_target[(rec.target_type, rec.target_id)].remove(file_id)
        for user in rec.shared_with:
            self._shared_to[user].remove(file_id)
        if rec.cached is not None:
            self._cache_bytes -= len(rec.cached)
        return rec

    def set_faults(self, **kw: float) -> None:
        """Change fault rates while running, e.g. `set_faults(error_500=0.1)`."""
        names = {f.name for f in dataclasses.fields(Faults)}
        for key, value in kw.items():
            if key not in names:
                raise TypeError(f"unknown fault {key!r}")
            setattr(self.faults, key, value)

    # ---- links ---------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        if not self.port:
            raise RuntimeError("FakeServer is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.prefix}/api_v3"

    def _sign(self, file_id: str, issued: int) -> str:
        return hmac.new(self._secret, f"{file_id}:{issued}".encode(), hashlib.sha256).hexdigest()

    def view_url(self, file_id: str) -> str:
        """A freshly signed download link (`fullpath`)."""
        issued = int(self.clock())
        code = self._sign(file_id, issued)
        return f"{self.origin}{self.prefix}/files/view/{file_id}?auth_code={code}&time={issued}"

    def _file_obj(self, rec: _Rec) -> dict[str, Any]:
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

    # ---- lifecycle -----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 2**20)  # rename forms only; uploads are streamed
        api = f"{self.prefix}/api_v3"
        app.router.add_get(f"{api}/files", self._endpoint("list", "_list"))
        app.router.add_post(f"{api}/files", self._endpoint("upload", "_upload"))
        app.router.add_get(f"{api}/files/{{id}}", self._endpoint("info", "_info"))
        app.router.add_post(f"{api}/files/{{id}}", self._endpoint("rename", "_rename"))
        app.router.add_delete(f"{api}/files/{{id}}", self._endpoint("delete", "_delete"))
        app.router.add_get(f"{self.prefix}/files/view/{{id}}", self._endpoint("view", "_view"))
        return app

    async def start(self) -> None:
        """Bind (127.0.0.1 and a free port by default) and serve."""
        # No access log: benchmarks push thousands of requests a second through this server.
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop serving and remove the server's own temporary data folder (not a given data_dir)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Remove the server's own temporary data folder; for a server that was never started."""
        if self._tmpdir is not None:
            tmpdir, self._tmpdir = self._tmpdir, None
            tmpdir.cleanup()

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[FakeServer]:
        """Serve from a daemon thread with its own event loop, for sync code; stop on exit."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name="syncer-fakeserver", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)

    # ---- request plumbing ----------------------------------------------------------------------

    def _draw(self, name: str) -> bool:
        """Whether fault `name` strikes this request; counted as fault_<name> when it does."""
        rate = getattr(self.faults, name)
        if rate <= 0 or self._fault_rng.random() >= rate:
            return False
        self.counters[f"fault_{name}"] += 1
        return True

    def _general_fault(self) -> web.Response | None:
        for name in _GENERAL_FAULTS:
            if self._draw(name):
                if name == "error_500":
                    return _error(500, "internal server error (injected)")
                if name == "error_503_html":
                    return web.Response(status=503, text=_HTML_503, content_type="text/html")
                if name == "error_429":
                    ra = self.faults.retry_after
                    after = str(int(ra)) if ra >= 1 else "0"
                    return _error(429, "too many requests (injected)", {"Retry-After": after})
                return _error(429, "too many requests (injected)")
        return None

    def _endpoint(self, kind: str, method: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Count the request, add latency, inject general faults, map _ApiError to a JSON error.

        The handler is looked up by name on each request, so a test may replace e.g. `srv._view`
        on a running server to script one odd answer.
        """

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.counters[kind] += 1
            if self.faults.latency_ms > 0:
                await asyncio.sleep(self.faults.latency_ms / 1000)
            resp = self._general_fault()
            if resp is None:
                try:
                    resp = await getattr(self, method)(request)
                except _ApiError as exc:
                    resp = _error(exc.status, exc.message)
            if resp.status != 200:
                self.counters[f"{kind}_{resp.status}"] += 1
            return resp

        return wrapped

    def _caller(self, request: web.Request) -> str | None:
        """The user a token belongs to, or None for the account API key; 401 otherwise."""
        code = request.headers.get("X-AccountCode")
        if code is not None and code != self.account_code:
            raise _ApiError(401, "unknown account code")
        token = request.headers.get("X-ApiToken")
        if not token:
            raise _ApiError(401, "missing X-ApiToken")
        if token == self.api_key:  # a test server: constant-time comparison buys nothing here
            return None
        user = self._token_users.get(token)
        if user is None:
            # Someone may have edited user_tokens directly: look there before refusing.
            user = next((u for u, t in self.user_tokens.items() if t == token), None)
            if user is None:
                raise _ApiError(401, "invalid token")
        return user

    def _file_for(self, request: web.Request, caller: str | None, *, reading: bool = False) -> _Rec:
        rec = self._files.get(request.match_info["id"])
        if rec is None:
            raise _ApiError(404, "file not found")
        if caller is not None and caller != rec.owner and not (rec.target_type == "user" and rec.target_id == caller):
            if not (reading and caller in rec.shared_with):
                raise _ApiError(403, "not your file")
        return rec

    def _hostile_get(self) -> web.Response | None:
        if self._draw("garbage_json"):
            return web.Response(body=_GARBAGE_JSON, content_type="application/json")
        if self._draw("html_200"):
            return web.Response(text=_HTML_200, content_type="text/html")
        return None

    # ---- /api_v3 handlers ----------------------------------------------------------------------

    async def _list(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        q = request.query
        ttype, tid, category = q.get("target_type"), q.get("target_id"), q.get("category")
        if ttype not in ("user", "visit") or not tid:
            raise _ApiError(400, "target_type (user|visit) and target_id are required")
        if category is not None and category not in seedlib.CATEGORIES:
            raise _ApiError(400, "unknown category")
        if caller is not None and (ttype != "user" or tid != caller):
            raise _ApiError(403, "a user token may list only its own files")
        ids = list(self._by_target.get((ttype, tid), ()))
        shared = q.get("include_shared")
        if ttype == "user" and shared is not None and shared.lower() not in ("0", "false", "no"):
            ids += [fid for fid in self._shared_to.get(tid, ()) if self._files[fid].category == "user_document"]
        recs = [self._files[fid] for fid in ids]
        if category is not None:
            recs = [r for r in recs if r.category == category]
        return self._hostile_get() or _ok([self._file_obj(r) for r in recs])

    async def _info(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request), reading=True)
        return self._hostile_get() or _ok(self._file_obj(rec))

    async def _rename(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request))
        try:
            form = await request.post()  # urlencoded or multipart: the vendor's own example mixes them
        except ValueError as exc:
            raise _ApiError(400, "unreadable form") from exc
        name = form.get("name")
        if not isinstance(name, str) or not name:
            raise _ApiError(400, "form field 'name' is required")
        self.rename_file(rec.id, name)
        return _ok(self._file_obj(rec))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        rec = self._file_for(request, self._caller(request))
        if not rec.deletable:
            raise _ApiError(403, "file is not deletable")
        self._forget(rec.id)
        await asyncio.to_thread(rec.path.unlink, True)
        return _ok(True)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if caller is None:
            raise _ApiError(403, "only a user token can upload")
        if not request.content_type.startswith("multipart/"):
            raise _ApiError(400, "multipart/form-data expected")
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
            raise _ApiError(400, "malformed multipart body") from exc
        if got is None:
            raise _ApiError(400, "form field 'file' is required")
        tmp, name, size, sha, data = got
        if category not in seedlib.CATEGORIES:
            await asyncio.to_thread(tmp.unlink, True)
            raise _ApiError(400, "meta.category must be one of " + ", ".join(seedlib.CATEGORIES))
        file_id = seedlib.new_uuid(self._rng)
        path = self.data_dir / file_id
        await asyncio.to_thread(os.replace, tmp, path)
        now = int(self.clock())
        rec = _Rec(
            id=file_id, name=name, size=size, ext=seedlib.ext_of(name), category=category, target_type="user",
            target_id=caller, meta_target={"id": caller, "type": "user"}, owner=caller, created=now,
            modified=now, deletable=True, path=path, sha256=sha, disposition=seedlib.content_disposition(name),
        )  # fmt: skip
        self._remember(rec, data)
        if self._draw("store_then_drop"):
            _reset(request)
        return _ok(self._file_obj(rec))

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
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise _ApiError(413, f"file larger than {self.max_upload_bytes} bytes")
                h.update(chunk)
                pending += chunk
                if size <= _CACHE_FILE_MAX:
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
        return tmp, name, size, h.hexdigest(), bytes(small) if size <= _CACHE_FILE_MAX else None

    # ---- the download link ---------------------------------------------------------------------

    async def _view(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["id"]
        q = request.query
        stamp = q.get("time", "")
        if not _TIME_RE.fullmatch(stamp):  # int() would also take "1_7e9" or " +17": not the link we made
            raise _ApiError(403, "invalid link")
        issued = int(stamp)
        if self._sign(file_id, issued) != q.get("auth_code"):
            raise _ApiError(403, "invalid link")
        if self.clock() - (issued + 1) > self.link_ttl:
            raise _ApiError(403, "link expired")
        rec = self._files.get(file_id)
        if rec is None:
            raise _ApiError(404, "file not found")
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
                    return _error(416, "range not satisfiable", {"Content-Range": f"bytes */{rec.size}"})
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
        if cut is None and rec.cached is not None:
            self.counters["view_bytes"] += length
            return web.Response(status=status, body=rec.cached[start:end], headers=headers)
        return await self._send_file(request, rec, start, length, status, headers, cut)

    async def _send_file(
        self, request: web.Request, rec: _Rec, start: int, length: int, status: int,
        headers: dict[str, str], cut: str | None, extra: bytes = b"",
    ) -> web.StreamResponse:  # fmt: skip
        """Stream `length` bytes from `start` in 256 KiB chunks, then `extra` (for wrong_size);
        `cut` stops halfway, with a reset or a clean close."""
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length + len(extra)
        await resp.prepare(request)
        to_send = length // 2 if cut else length
        sent = 0
        f = None if rec.cached is not None else await asyncio.to_thread(open, rec.path, "rb")
        try:
            if f is not None and start:
                await asyncio.to_thread(f.seek, start)
            while sent < to_send:
                n = min(_CHUNK, to_send - sent)
                if f is None:
                    chunk = rec.cached[start + sent : start + sent + n]  # type: ignore[index]
                else:
                    chunk = await asyncio.to_thread(f.read, n)
                if not chunk:
                    break
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
            _reset(request)
        elif cut == "truncate" and request.transport is not None:
            request.transport.close()  # flushes what was written, then FIN: a short body
        return resp

    async def _send_endless(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        chunk = b"\0" * _CHUNK
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


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def serve_forever(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Start `srv`, call `on_ready(srv)`, serve until SIGINT/SIGTERM (or cancellation), then stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    await srv.start()
    try:
        if on_ready is not None:
            on_ready(srv)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await srv.stop()


def run_blocking(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Serve `srv` on a new event loop until SIGINT/SIGTERM: for `syncer fake-server`."""
    asyncio.run(serve_forever(srv, on_ready))


def main(argv: list[str] | None = None) -> None:
    """`python -m syncer.fakeserver`: serve, and print one JSON line with base_url, api_key and tokens."""
    p = argparse.ArgumentParser(prog="python -m syncer.fakeserver", description=main.__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--files-per-user", type=int, default=5)
    p.add_argument("--visits", type=int, default=2)
    p.add_argument("--files-per-visit", type=int, default=3)
    p.add_argument("--hostile-names", action="store_true")
    p.add_argument("--link-ttl", type=float, default=3600)
    p.add_argument("--data-dir")
    a = p.parse_args(argv)
    srv = FakeServer(
        seed=a.seed, users=a.users, files_per_user=a.files_per_user, visits=a.visits,
        files_per_visit=a.files_per_visit, hostile_names=a.hostile_names, link_ttl=a.link_ttl,
        data_dir=a.data_dir, port=a.port,
    )  # fmt: skip

    def ready(s: FakeServer) -> None:
        info = {"base_url": s.base_url, "api_key": s.api_key, "account_code": s.account_code,
                "user_tokens": s.user_tokens, "visits": s.visits}  # fmt: skip
        print(json.dumps(info), flush=True)

    run_blocking(srv, ready)


if __name__ == "__main__":
    main()
