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

`FakeServer` is assembled from mixins, each in its own module: `store` (users, visits and
files, no HTTP), `api` (the `/api_v3` handlers) and `view` (the download link); `http` holds the JSON
answers and the TCP reset they share, `seed` the seed data and `run` serving from the command line.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import os
import random
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from syncer.fakeserver import seed as seedlib
from syncer.fakeserver.api import ApiMixin
from syncer.fakeserver.http import ApiRefusal, error_response
from syncer.fakeserver.store import FileRec, StoreMixin
from syncer.fakeserver.view import ViewMixin

__all__ = ["Faults", "FakeServer"]

log = logging.getLogger("syncer.fakeserver")
_CLIENT_GONE = 499  # nginx's "client closed request": the status of an answer nobody is left to read

_HTML_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head><body><center>"
    "<h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>"
)
_GENERAL_FAULTS = ("error_500", "error_503_html", "error_429", "error_429_no_header")
_DURATIONS = ("retry_after", "latency_ms", "conn_rate_mbps")  # the Faults fields that are not probabilities


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
    conn_rate_mbps: float = 0.0  # view: each answer's body paced to this many MB/s (10**6 bytes/s); 0: no cap
    # hostile-server modes
    garbage_json: float = 0.0  # /api_v3 GET: 200 with a body that is not JSON
    html_200: float = 0.0  # /api_v3 GET: 200 with an HTML body
    wrong_size: float = 0.0  # view: the whole file plus one byte, Content-Length matching what is sent
    endless_body: float = 0.0  # view: a chunked body that goes on until the client leaves (max 1 GiB)
    redirect_other_host: float = 0.0  # view: 302 to http://127.0.0.2:<port>/... (another host)

    def __post_init__(self) -> None:
        """ValueError naming the field unless every rate is in 0..1 and the durations and the rate cap are >= 0."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _DURATIONS:
                if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{f.name}={value!r}: must be a number >= 0")
            elif not (isinstance(value, int | float) and 0.0 <= value <= 1.0):  # NaN fails both comparisons
                raise ValueError(f"{f.name}={value!r}: a rate must be between 0 and 1")


class FakeServer(StoreMixin, ApiMixin, ViewMixin):
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
        # Body bytes the view link sent, by file id (cut bodies count what was sent): "resumed, not restarted".
        self.served: collections.Counter[str] = collections.Counter()
        self.api_key = api_key if api_key is not None else seedlib.hex_token(self._rng)
        self._secret = self._rng.randbytes(32)
        self.users: list[str] = []
        self.visits: list[str] = []
        self.user_tokens: dict[str, str] = {}
        self._token_users: dict[str, str] = {}
        self._people: dict[str, dict[str, Any]] = {}
        self._intake_of: dict[str, str] = {}
        self._files: dict[str, FileRec] = {}
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

    # ---- faults --------------------------------------------------------------------------------

    def served_bytes(self, file_id: str) -> int:
        """How many body bytes of this file the view link has sent so far (every answer, cut ones too)."""
        return self.served[file_id]

    def set_faults(self, **kw: float) -> None:
        """Change fault rates while running, e.g. `set_faults(error_500=0.1)`."""
        names = {f.name for f in dataclasses.fields(Faults)}
        for key in kw:
            if key not in names:
                raise TypeError(f"unknown fault {key!r}")
        dataclasses.replace(self.faults, **kw)  # ValueError for a rate outside 0..1, before any change
        for key, value in kw.items():
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
        # Quoted: a test may give a file an id no real server would (control characters, a slash).
        path_id = urllib.parse.quote(file_id, safe="")
        return f"{self.origin}{self.prefix}/files/view/{path_id}?auth_code={code}&time={issued}"

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
                    return error_response(500, "internal server error (injected)")
                if name == "error_503_html":
                    return web.Response(status=503, text=_HTML_503, content_type="text/html")
                if name == "error_429":
                    ra = self.faults.retry_after
                    after = str(int(ra)) if ra >= 1 else "0"
                    return error_response(429, "too many requests (injected)", {"Retry-After": after})
                return error_response(429, "too many requests (injected)")
        return None

    def _endpoint(self, kind: str, method: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Count the request, add latency, inject general faults, map ApiRefusal to a JSON error.

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
                except ApiRefusal as exc:
                    resp = error_response(exc.status, exc.message)
                except ConnectionError as exc:
                    # The client left (a killed run, a timeout): routine for a server, so one line at
                    # debug.  Raised on, aiohttp would log "Error handling request" and a traceback.
                    self.counters[f"{kind}_client_gone"] += 1
                    log.debug("%s: the client went away (%s)", kind, type(exc).__name__)
                    return web.Response(status=_CLIENT_GONE)  # never sent: aiohttp drops it quietly
            if resp.status != 200:
                self.counters[f"{kind}_{resp.status}"] += 1
            return resp

        return wrapped

