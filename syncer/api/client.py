"""FilesClient: the six endpoints of the Files API (v3) over two aiohttp sessions (transfers; metadata).
Turning aiohttp errors and HTTP statuses into :mod:`syncer.errors` is :mod:`syncer.api.translate`'s job.

The contract is ``shared/vsee-files-api.md``.  What this module promises its callers:

- Idempotent calls (``list_files``, ``file_info``, ``rename``, ``delete``) are retried through the
  ``RetryPolicy`` on transient errors.  ``download`` and ``upload`` are tried once: a stream cannot be
  retried piecewise (the pull retries the whole transfer), and an upload is never re-sent blindly.
- ``upload`` raises a ``TransientError`` only when nothing can have been stored (the connection was never
  made; 408/429/503), a ``PermanentError``/``AuthError`` for 4xx, and ``UploadOutcomeUnknown`` whenever the
  request may have reached the server and been stored (lost answer, 500/502/504, an unreadable 2xx), so the
  push can retry with ``policy.call(client.upload, ..)`` and reconcile by listing on an unknown outcome.
- No message, log line or exception chain carries a token, an ``auth_code`` or a query string.
- ``/api_v3`` calls never follow redirects (``X-ApiToken`` would go with them to another host); a download
  link does, since it carries no token and may legitimately point elsewhere.
- A view link, and every hop of its redirects, is checked with ``config.url_refusal`` before anything is
  sent: plain http to a host that is not a loopback address raises ``InsecureUrlError`` (permanent for
  that file) without a connection.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import ssl
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from syncer.api.results import CHUNK_SIZE, Download, Listing, content_range, parse_listing, ranged_download
from syncer.api.retry import RetryPolicy
from syncer.api.translate import (
    RedactedCause,
    parse_data,
    read_bounded,
    safe_cause,
    status_error,
    translate_exc,
)
from syncer.config import ApiConfig, url_refusal
from syncer.errors import (
    InsecureUrlError,
    NotFoundError,
    ProtocolError,
    UploadOutcomeUnknown,
)
from syncer.models import RemoteFile, Target
from syncer.redact import redact_link, redact_url

log = logging.getLogger("syncer.client")

MAX_JSON_BODY = 256 * 1024 * 1024   # a listing of many thousands of files fits; an endless body does not
THREAD_PARSE_ITEMS = 2000           # and big listings' items
API_CONNECTIONS = 8                 # the pool for metadata calls (listings, fresh links), apart from transfers
LINK_REFRESHES = 3                  # fresh fullpaths fetched for one file within one attempt (pull and push)
MAX_REDIRECTS = 10                  # hops a view link may take (aiohttp's own default)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# 5xx answers to an upload after which the file may well be stored: the origin failed while answering
# (500) or a gateway lost the origin's answer (502, 504).  503 and 429 are refusals made before any work.


def make_session(api: ApiConfig, *, limit: int) -> aiohttp.ClientSession:
    """The run's one HTTP session: no total timeout (a long download must not die at 5 minutes), connect
    and per-read timeouts from the config, a pool as large as the run's concurrency, TLS always verified
    (against ``api.ca_bundle`` when set).  Call it inside the running event loop; close it when done."""
    ssl_ctx: ssl.SSLContext | bool = True
    if api.ca_bundle is not None:
        ssl_ctx = ssl.create_default_context(cafile=str(api.ca_bundle))
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ssl=ssl_ctx)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=api.timeout_connect, sock_read=api.timeout_read)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False)


class _DownloadContext:
    """``async with client.download(url) as dl:`` — opens the link on enter, releases it on exit."""

    __slots__ = ("_client", "_url", "_offset", "_resp", "_span")

    def __init__(self, client: FilesClient, url: str, offset: int,
                 span: tuple[int, int, int] | None = None) -> None:
        self._client = client
        self._url = url
        self._offset = offset
        self._span = span
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> Download:
        if self._span is not None:
            dl = await self._client._open_range(self._url, *self._span)
        else:
            dl = await self._client._open_download(self._url, self._offset)
        self._resp = dl._resp
        return dl

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        resp, self._resp = self._resp, None
        if resp is not None:
            # A body left unread (error, early exit) closes the connection instead of draining it.
            if et is not None or not resp.content.at_eof():
                resp.close()
            else:
                resp.release()


# -- the client --------------------------------------------------------------------------------------

class FilesClient:
    """The Files API over shared ``aiohttp.ClientSession``s (see ``make_session``).

    ``session`` carries the transfers (downloads and uploads): its pool's size is the run's
    concurrency.  ``api_session``, when given, carries every other call (listings, file info, renames,
    deletes) in a pool of its own (``API_CONNECTIONS``), so a listing or a fresh link never waits behind
    a pool full of slow downloads, and listing never takes a download's connection.

    ``token`` is the account API key sent as ``X-ApiToken`` on every ``/api_v3`` call (``upload`` takes
    the uploading user's token instead); ``account_code`` is sent as ``X-AccountCode`` when set.
    ``retry``: the policy for idempotent calls (default: ``RetryPolicy()``).
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str, account_code: str = "",
                 retry: RetryPolicy | None = None, api_session: aiohttp.ClientSession | None = None) -> None:
        if not token:
            raise ValueError("a token is required")
        self._session = session
        self._api_session = api_session if api_session is not None else session
        self._base = base_url.rstrip("/")
        self._files_url = URL(self._base + "/files")
        self._token = token
        self._account_code = account_code
        self.retry = retry if retry is not None else RetryPolicy()
        self._headers = self._api_headers(token)

    def __repr__(self) -> str:
        return f"FilesClient({redact_url(self._base)!r})"

    @property
    def base_url(self) -> str:
        return self._base

    def _api_headers(self, token: str) -> dict[str, str]:
        headers = {"X-ApiToken": token, "Accept": "application/json"}
        if self._account_code:
            headers["X-AccountCode"] = self._account_code
        return headers

    def _file_url(self, file_id: str) -> URL:
        if not isinstance(file_id, str) or file_id in ("", ".", "..") or not file_id.isprintable():
            raise ProtocolError(f"file id {str(file_id)[:80]!r} cannot be used in a URL")
        return URL(f"{self._base}/files/{quote(file_id, safe='')}", encoded=True)

    # -- endpoints ---------------------------------------------------------------------------------

    async def list_files(self, target: Target, *, category: str | None = None,
                         include_shared: bool = False, token: str | None = None) -> Listing:
        """``GET /files`` for one target: every file of it, in one answer (retried on transient errors).

        404 gives an empty ``Listing`` with ``target_missing`` set.  Items that cannot be parsed do not
        sink the listing: they are named in ``Listing.bad_items``.  ``data`` that is not a list raises
        ``ProtocolError``.  ``token``: list as that user (a user token may list its own files) instead
        of with the account API key; the push reconciles a lost upload this way.
        """
        params = {"target_id": target.id, "target_type": target.type}
        if category:
            params["category"] = category
        if include_shared:
            params["include_shared"] = "1"
        headers = self._api_headers(token) if token else None
        try:
            data = await self.retry.call(self._call, "GET", self._files_url, params=params, headers=headers)
        except NotFoundError:
            return Listing(target_missing=True)
        if not isinstance(data, list):
            raise ProtocolError(f"the listing of {target} is a {type(data).__name__}, not a list",
                                url=str(self._files_url))
        if len(data) > THREAD_PARSE_ITEMS:
            listing = await asyncio.to_thread(parse_listing, data, target)
        else:
            listing = parse_listing(data, target)
        if listing.bad_items:
            log.debug("listing of %s: %d unusable items", target, len(listing.bad_items))
        return listing

    async def file_info(self, file_id: str) -> RemoteFile:
        """``GET /files/:id``: the file object with a fresh ``fullpath`` (required: ProtocolError if absent)."""
        url = self._file_url(file_id)
        data = await self.retry.call(self._call, "GET", url)
        return RemoteFile.from_api(data, require_fullpath=True)

    def download(self, url: str, *, offset: int = 0) -> _DownloadContext:
        """Open a download link (a ``fullpath``) as given: ``async with client.download(fp) as dl:``.

        Sends no API headers.  With ``offset > 0`` asks for ``Range: bytes=offset-``; ``dl.offset`` says
        what was served (0 unless a matching 206 came back; a 206 that does not match, or a 416, is
        fetched again whole).  Tried once: the caller retries the whole transfer.  A 401/403 raises
        ``LinkExpiredError`` (fetch a fresh link with ``file_info``); other statuses as for API calls.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        return _DownloadContext(self, url, offset)

    def download_range(self, url: str, start: int, end: int, total: int) -> _DownloadContext:
        """Open bytes ``start``..``end`` (inclusive) of a ``total``-byte file at a download link:
        ``async with client.download_range(fp, a, b, n) as dl:``.  Raises ``RangeNotServed`` unless the
        answer is a 206 whose ``Content-Range`` is exactly ``bytes start-end/total`` (and whose length,
        when given, matches); otherwise as ``download``.  For syncer.pull.segments."""
        if not 0 <= start <= end < total:
            raise ValueError("the range must lie within the file")
        return _DownloadContext(self, url, 0, (start, end, total))

    async def upload(self, path: Path, *, category: str = "user_document", token: str,
                     filename: str | None = None, body: Callable[[str], Any] | None = None) -> RemoteFile:
        """``POST /files``: upload ``path`` as the user whose ``token`` is given (that user owns it).

        Streams the file from disk; or, with ``body``, what ``body(content_type)`` returns (bytes, or an
        aiohttp payload of known size: restore's decrypted plaintext, never written to disk).  Never
        retried here; see the module docstring for which errors mean "not stored" (TransientError,
        PermanentError, AuthError) and which mean "maybe stored" (UploadOutcomeUnknown).
        """
        if not token:
            raise ValueError("upload needs the uploading user's token")
        path = Path(path)
        name = form_filename(filename or path.name)
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        # Opened and wrapped here, in the call: aiohttp closes the file once sent and a FormData cannot
        # be sent twice (aiohttp #5577), so every try must build its own (a body too).
        fh = await asyncio.to_thread(open, path, "rb") if body is None else None
        try:
            # quote_fields=False: the name goes as UTF-8 in a quoted-string, as browsers and curl send it;
            # aiohttp's quoting would percent-encode it ("my%20report.pdf") and servers store that as is.
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("meta.category", category)
            form.add_field("file", fh if body is None else body(ctype), filename=name, content_type=ctype)
            data = await self._call("POST", self._files_url, data=form, headers=self._api_headers(token),
                                    upload=True)
        finally:
            if fh is not None:
                fh.close()
        try:
            return RemoteFile.from_api(data)
        except ProtocolError as exc:
            raise UploadOutcomeUnknown(f"the upload's answer is unusable ({exc}): it may have been stored",
                                       status=200, url=str(self._files_url)) from None

    async def rename(self, file_id: str, name: str) -> RemoteFile:
        """``POST /files/:id`` with the form field ``name`` (urlencoded); retried (it is idempotent)."""
        url = self._file_url(file_id)
        data = await self.retry.call(self._call, "POST", url, data={"name": name})
        return RemoteFile.from_api(data)

    async def delete(self, file_id: str) -> bool:
        """``DELETE /files/:id``: True when the server said so.  Retried on transient errors; a 404 on a
        retry counts as deleted (an earlier try's answer was lost), a 404 on the first try is raised."""
        url = self._file_url(file_id)
        tries = 0

        async def once() -> Any:
            nonlocal tries
            tries += 1
            try:
                return await self._call("DELETE", url)
            except NotFoundError:
                if tries > 1:
                    return True
                raise

        data = await self.retry.call(once)
        return data is True or data == 1

    # -- one request -------------------------------------------------------------------------------

    async def _call(self, method: str, url: URL, *, params: dict[str, str] | None = None, data: Any = None,
                    headers: dict[str, str] | None = None, upload: bool = False) -> Any:
        """One ``/api_v3`` request, once: the ``data`` of the JSON answer, or one of our errors."""
        session = self._session if upload else self._api_session
        try:
            async with session.request(method, url, params=params, data=data,
                                       headers=headers or self._headers, allow_redirects=False) as resp:
                status = resp.status
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s %s -> %d", method, redact_url(url), status)
                if not 200 <= status < 300:
                    raise await status_error(resp, str(url), upload=upload, secrets=self._secrets(headers))
                if status == 204:
                    return True if method == "DELETE" else None
                try:
                    body = await read_bounded(resp, MAX_JSON_BODY, str(url))
                except ProtocolError as exc:
                    if upload:  # a 2xx too large to read: the server did take the upload
                        raise UploadOutcomeUnknown(f"{exc.args[0]}: the upload may have been stored",
                                                   status=status, url=str(url)) from None
                    raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate_exc(exc, str(url), upload=upload) from safe_cause(exc)
        return await parse_data(body, str(url), status=status, upload=upload)

    def _secrets(self, headers: dict[str, str] | None) -> tuple[str, ...]:
        token = (headers or self._headers).get("X-ApiToken", "")
        return (self._token, token) if token and token != self._token else (self._token,)

    async def _open_download(self, url: str, offset: int) -> Download:
        headers = {"Accept-Encoding": "identity"}  # lengths and ranges then count the file's own bytes
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        resp = await self._get_view(url, headers)
        try:
            if offset > 0 and resp.status in (206, 416):
                served = content_range(resp.headers.get("Content-Range", ""))
                if resp.status == 416 or served is None or served[0] != offset:
                    # Not the range asked for: take the whole file instead.
                    log.debug("GET %s: range %d not served as asked (%d); fetching it whole",
                              redact_link(url), offset, resp.status)
                    resp.close()
                    del headers["Range"]
                    offset = 0
                    resp = await self._get_view(url, headers)
            # A server that compresses anyway (despite "identity") announces the compressed length,
            # while aiohttp hands us the decompressed bytes: no length can be checked then.
            encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
            clen = None if encoded else resp.content_length
            if resp.status == 206 and offset > 0 and not encoded:
                start, end, total = content_range(resp.headers.get("Content-Range", ""))  # type: ignore[misc]
                length = clen if clen is not None else end - start + 1
                return Download(resp, url, offset=start, total_size=total, length=length)
            if resp.status in (200, 203):
                return Download(resp, url, offset=0, total_size=clen, length=clen)
            raise await status_error(resp, redact_link(url), view=True, secrets=(self._token,))
        except BaseException:
            resp.close()
            raise

    async def _open_range(self, url: str, start: int, end: int, total: int) -> Download:
        resp = await self._get_view(url, {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end}"})
        try:
            if resp.status in (200, 203, 206, 416):
                return ranged_download(resp, url, start, end, total)
            raise await status_error(resp, redact_link(url), view=True, secrets=(self._token,))
        except BaseException:
            resp.close()
            raise

    async def _get_view(self, url: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """GET a view link, following its redirects one hop at a time so that each hop's URL is checked
        (``url_refusal``) before anything is sent to it."""
        for hop in range(MAX_REDIRECTS + 1):
            _check_link(url, redirected=hop > 0)
            try:
                resp = await self._session.get(url, headers=headers, allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                raise translate_exc(exc, redact_link(url)) from safe_cause(exc)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("GET %s -> %d", redact_link(url), resp.status)
            location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
            if not location:
                return resp
            resp.close()
            try:
                nxt = URL(location)
                url = str(nxt if nxt.is_absolute() else URL(url).join(nxt))
            except (ValueError, TypeError):
                raise ProtocolError("the view link redirects to an unusable URL", url=redact_link(url)) from None
        raise ProtocolError("too many redirects", url=redact_link(url))


def _check_link(url: str, *, redirected: bool) -> None:
    """Before any connection, for a link syncer must not follow (see ``url_refusal``): InsecureUrlError for
    plain http to a host that is not a loopback address (permanent), ProtocolError for a link that is not
    a usable http(s) URL at all (a bad answer, tried again next run)."""
    refusal = url_refusal(url)
    if refusal:
        what = f"the view link redirects to {redact_link(url)}, which" if redirected else "the view link"
        try:
            parts = urlsplit(url)
            plain_http = parts.scheme.lower() == "http" and bool(parts.hostname)
        except ValueError:
            plain_http = False
        raise (InsecureUrlError if plain_http else ProtocolError)(f"{what} {refusal}; nothing was fetched")


def form_filename(name: str) -> str:
    """A file name safe inside a multipart part header: CR, LF and NUL percent-encoded the way browsers
    do (WHATWG), so no name can break out of the header; the rest is sent as it is."""
    if not name:
        raise ValueError("an upload needs a file name")
    return name.replace("\r", "%0D").replace("\n", "%0A").replace("\0", "%00")



# Re-exported for callers that want to name them without importing errors.
__all__ = [
    "CHUNK_SIZE",
    "Download",
    "FilesClient",
    "Listing",
    "RedactedCause",
    "make_session",
]
