"""Translation: the one place that turns aiohttp's exceptions and the API's error statuses into
``syncer.errors``, and reads answer bodies within bounds.  ``syncer.api.client`` is its only caller.

No text built here carries a token or a signed link: URLs pass through ``redact_url``.  An error
status becomes a message of its own words only (``HTTP 404: the server refused the view link``): the
server's text may name a patient or a file, so it goes apart into the error's ``detail``, scrubbed of
secrets, its control characters escaped and its length bounded (see ``syncer.errors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

from syncer.api.retry import parse_retry_after
from syncer.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ConnectionFailed,
    ForbiddenError,
    LinkExpiredError,
    NotFoundError,
    PermanentError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TimeoutError_,
    TooLargeError,
    TruncatedBody,
    UploadOutcomeUnknown,
)
from syncer.redact import REDACTED, escape, redact_link, redact_url, scrub

log = logging.getLogger("syncer.client")

MAX_ERROR_BODY = 64 * 1024          # an error answer is read this far, no further
THREAD_PARSE_ABOVE = 2 * 1024 * 1024  # parse big JSON bodies off the event loop
MAX_SERVER_MESSAGE = 200            # characters of the server's error message kept (in ``detail``)
_UPLOAD_UNKNOWN_STATUSES = frozenset({500, 502, 504})
# Our own words for each status: the message of the error, the same whatever the server wrote.
_DESCRIPTIONS = {
    400: "the server refused the request as invalid",
    401: "the token was rejected",
    403: "the server refused access",
    404: "not found",
    408: "the server timed out waiting for the request",
    410: "gone",
    413: "the file is too large for the server",
    429: "too many requests",
}


def translate_exc(exc: BaseException, url: str, *, upload: bool = False, in_body: bool = False) -> ApiError:
    """Our error for a foreign exception raised while talking to ``url``.  For an upload, anything that
    can happen after the connection was made means the outcome is unknown."""
    where = redact_url(url)
    if isinstance(exc, aiohttp.ClientConnectorError):  # DNS, refused, TLS handshake: nothing was sent
        os_err = getattr(exc, "os_error", None)
        reason = getattr(os_err, "strerror", None) or type(os_err or exc).__name__
        return ConnectionFailed(f"cannot connect to {exc.host}:{exc.port}: {scrub(str(reason))}", url=where)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no connection within sock_connect: nothing sent
        return TimeoutError_("timed out connecting", url=where)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError)) and not in_body:
        return ProtocolError("not a usable http(s) URL", url=where)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return ProtocolError("too many redirects", url=where)
    if upload:
        return UploadOutcomeUnknown(
            f"the upload's answer was lost ({_describe_foreign(exc)}): it may have been stored", url=where)
    if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp's SocketTimeoutError
        return TimeoutError_("timed out waiting for the server" + (" mid-body" if in_body else ""), url=where)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TruncatedBody(f"the body was cut short ({_describe_foreign(exc)})", url=where)
    return ConnectionFailed(f"connection failed{' mid-body' if in_body else ''} ({_describe_foreign(exc)})", url=where)


def payload_reason(exc: BaseException) -> str:
    """Why aiohttp gave up on a body, in a few words."""
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            break
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        e = e.__cause__ or e.__context__
    text = str(exc)
    if "ConnectionResetError" in text:
        return "connection reset"
    if "ContentLengthError" in text or "content length" in text:
        return "connection closed early"
    if "TransferEncodingError" in text:
        return "chunked encoding broken off"
    return type(exc).__name__


def _describe_foreign(exc: BaseException) -> str:
    """A short, secret-free description of a foreign exception."""
    if isinstance(exc, aiohttp.ClientResponseError):  # its str() carries the full URL
        return type(exc).__name__
    text = escape(scrub(str(exc))).strip()
    if len(text) > MAX_SERVER_MESSAGE:
        text = text[:MAX_SERVER_MESSAGE] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedactedCause(Exception):
    """Stands in, as ``__cause__``, for a foreign exception whose text would carry a signed URL or token;
    keeps its type name, its redacted text and its traceback."""


def safe_cause(exc: BaseException) -> BaseException:
    """``exc`` itself when nothing in its chain can leak a URL's query, else a ``RedactedCause``."""
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 8:
        if isinstance(e, aiohttp.ClientResponseError) or scrub(str(e)) != str(e):
            break
        e = e.__cause__ or e.__context__
        seen += 1
    else:
        return exc
    stand_in = RedactedCause(f"{type(exc).__module__}.{type(exc).__qualname__}: {_describe_foreign(exc)}")
    stand_in.__traceback__ = exc.__traceback__
    stand_in.__suppress_context__ = True
    return stand_in


def describe_status(status: int, *, view: bool = False) -> str:
    """``HTTP 404: not found``: the status and our fixed description of it, never the server's words."""
    if view:
        what = "server error on the view link" if status >= 500 else "the server refused the view link"
    else:
        what = _DESCRIPTIONS.get(status) or ("server error" if status >= 500 else "unexpected answer")
    return f"HTTP {status}: {what}"


async def status_error(resp: aiohttp.ClientResponse, url: str, *, view: bool = False, upload: bool = False,
                        secrets: tuple[str, ...] = ()) -> ApiError:
    """Our error for a non-2xx answer.  Its message is :func:`describe_status` (plus what kind of body came
    when it held no message); the server's own message, read from a bounded body, goes into ``detail``."""
    status = resp.status
    detail, body_kind = await _server_message(resp, secrets)
    message = describe_status(status, view=view) + (f" {body_kind}" if body_kind else "")
    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
    kw: dict[str, Any] = {"url": url, "detail": detail}
    err: ApiError
    if 300 <= status < 400:
        location = resp.headers.get("Location")
        where = f" to {redact_link(location)}" if location else ""  # its path may name a file
        err = ProtocolError(f"HTTP {status}: unexpected redirect{where}", status=status, **kw)
    elif view and status in (401, 403):
        err = LinkExpiredError(message, status=status, **kw)
    elif status == 400:
        err = BadRequestError(message, **kw)
    elif status == 401:
        err = AuthError(message, **kw)
    elif status == 403:
        err = ForbiddenError(message, **kw)
    elif status in (404, 410):
        err = NotFoundError(message, status=status, **kw)
    elif status == 408:
        err = TimeoutError_(message, status=status, **kw)
    elif status == 413:
        err = TooLargeError(message, **kw)
    elif status == 429:
        err = RateLimitedError(message, retry_after=retry_after, **kw)
    elif upload and (status in _UPLOAD_UNKNOWN_STATUSES or (status >= 500 and status != 503)):
        err = UploadOutcomeUnknown(f"{message}: the upload may have been stored", status=status, **kw)
    elif status >= 500:
        err = ServerError(message, status=status, **kw)
        err.retry_after = retry_after
    else:
        err = PermanentError(message, status=status, **kw)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s %s", type(err).__name__, err)  # the message only: the detail may name a patient
    return err


async def _server_message(resp: aiohttp.ClientResponse, secrets: tuple[str, ...]) -> tuple[str | None, str]:
    """(the server's own message from ``{"error": {"message": ...}}`` or None, and what kind of body came
    when there was no message: "(empty body)", "(non-JSON body)", ...).  HTML and empty bodies are fine.
    The message is scrubbed of secrets, its control characters escaped, its length bounded."""
    try:
        body = await _read_prefix(resp, MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None, "(body unreadable)"
    if not body.strip():
        return None, "(empty body)"
    try:
        doc = json.loads(body)
    except ValueError:
        return None, "(non-JSON body)"
    msg: Any = None
    if isinstance(doc, dict):
        err = doc.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        if msg is None:
            msg = doc.get("message")
    if not isinstance(msg, str) or not msg.strip():
        return None, "(no message)"
    text = scrub(msg)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = escape(text).strip()
    return text[:MAX_SERVER_MESSAGE] + ("..." if len(text) > MAX_SERVER_MESSAGE else ""), ""


async def _read_prefix(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body; the rest is left unread (the connection is then closed)."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The whole body, or ProtocolError once it is longer than ``limit``."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise ProtocolError(f"the answer announces {length} bytes, over the {limit}-byte limit", url=url)
        return await resp.read()
    body = await _read_prefix(resp, limit + 1)
    if len(body) > limit:
        raise ProtocolError(f"the answer is longer than the {limit}-byte limit", url=url)
    return body


async def parse_data(body: bytes, url: str, *, status: int, upload: bool) -> Any:
    """The ``data`` member of a success answer; ProtocolError (UploadOutcomeUnknown for an upload) when
    the body is not the JSON envelope the contract promises."""
    try:
        doc = await asyncio.to_thread(json.loads, body) if len(body) > THREAD_PARSE_ABOVE else json.loads(body)
    except ValueError:
        problem = f"HTTP {status} with a non-JSON body" if body.strip() else f"HTTP {status} with an empty body"
    else:
        if isinstance(doc, dict) and "data" in doc:
            return doc["data"]
        problem = f"HTTP {status} JSON without 'data'"
    if upload:
        raise UploadOutcomeUnknown(f"{problem}: the upload may have been stored", status=status, url=url)
    raise ProtocolError(problem, status=status, url=url)


