"""One upload, exactly once: the uploader push and restore share.

``POST /files`` is not idempotent, so how a file goes up is decided here, once, for every job that
uploads (push sends local files, restore sends backed-up ones):

- The caller's ``intent`` callback makes a row durable (state ``uploading``, the time the attempt
  began, the sha256 being sent) before every POST: after a crash or a lost answer it is the evidence.
- A POST whose outcome is unknown (``UploadOutcomeUnknown``: answer lost, 500/502/504, an unreadable
  2xx) is never re-sent blindly: :meth:`Uploader.reconcile` lists the user's documents and adopts one
  with the same name (NFC) and size, created since the attempt began (minus ``CLOCK_SLACK``), not
  claimed by another file (the caller's ``claimed`` callback), whose downloaded bytes hash to the
  sha256 sent.  The hash is the only proof: a look-alike someone else added is never taken for ours.
  Only when there is none is the file sent again (bounded by ``retry.attempts``).
- Refusals made before anything was stored (408/429/503, a refused connection) are sent again after
  the policy's wait; 400/413 and the rest are the caller's to record.
- A source that changes under an upload (``unchanged`` says so) is not sent again; if the server
  stored it, the stored bytes are checked: a clean copy of what was hashed is kept, a torn one deleted.
- :class:`InFlight` keeps two look-alike files (same user, name and size) from being in flight at
  once, so a reconcile cannot adopt the other one's upload.

The file names sent are patient data: nothing here logs them, and :func:`syncer.redact.without_name` takes them out
of a server's error text.  The multipart encoding of a name is the client's (``form_filename``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.api.client import LINK_REFRESHES, form_filename
from syncer.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    ItemError,
    Kind,
    LinkExpiredError,
    NotFoundError,
    SyncerError,
    TooLargeError,
    TransientError,
    UploadOutcomeUnknown,
    classify,
    detail_of,
    error_class,
)
from syncer.models import RemoteFile, Target
from syncer.redact import scrub, without_name
from syncer.run.runner import RunContext

CLOCK_SLACK = 120.0     # seconds: a server clock this far behind ours still finds its own upload


@dataclass(frozen=True)
class Failure:
    """What a failed upload leaves: the row's new fields and what the log and the audit trail say."""

    permanent: bool
    fields: dict[str, Any]   # for the item's row: state (unless the outcome is unknown), error, class
    message: str             # our words, file names taken out: the row, the log
    detail: str              # the server's words (when it said any), names taken out: the event only


def upload_failure(exc: BaseException, *names: str | None, file_id: str | None = None) -> Failure:
    """The one verdict on a failed upload (push and restore).  400 and 413 are permanent: nothing was
    stored and the file is not sent again while unchanged; an
    unknown outcome keeps the row ``uploading`` so the next run looks before sending; anything else is
    ``failed``, tried again next run.  ``names`` (the file's name, as sent) never reach a message."""
    permanent = classify(exc, upload=True) is Kind.PERMANENT
    if isinstance(exc, TooLargeError):
        message = f"the server refused the file as too large (413); not retried until it changes: {exc}"
    elif isinstance(exc, BadRequestError):
        message = f"the server refused the upload (400); not retried until the file changes: {exc}"
    elif isinstance(exc, SyncerError):
        message = str(exc)
    else:
        message = f"unexpected error: {type(exc).__name__}: {exc}"
    names = tuple(n for name in names if name for n in (name, form_name(name)))
    message = without_name(scrub(message), *names)
    if file_id and file_id not in message:
        message = f"file {file_id}: {message}"
    message = message[:500]
    detail = detail_of(exc)
    detail = without_name(scrub(detail), *names)[:500] if detail else message
    fields: dict[str, Any] = {"last_error": message, "error_class": error_class(exc)}
    if permanent:
        fields.update(state="permanent", intent_at=None)
    elif not isinstance(exc, UploadOutcomeUnknown):
        fields["state"] = "failed"
    return Failure(permanent, fields, message, detail)


class UserRejected(Exception):
    """The user's token was refused (401)."""


class EndpointMissing(SyncerError):
    """POST /files answered 404: the base URL is wrong; the run stops."""


class Stopping(Exception):
    """The run is stopping: leave the item as the manifest has it."""


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def form_name(name: str) -> str:
    """The name as the multipart header carries it (the client's encoding): what the server stores."""
    return form_filename(name) if name else name


@dataclass
class Upload:
    """One file to send as one user's document."""

    user_id: str
    token: str = field(repr=False)      # the user's own token: a secret
    path: Path                          # where the bytes are read from (plaintext)
    name: str = field(repr=False)       # as sent (patient data: never logged)
    category: str
    size: int
    sha256: str
    label: str                          # what logs call it: an item id, never its name
    body: Callable[[str], Any] | None = field(default=None, repr=False)  # instead of reading path: see client.upload


class InFlight:
    """At most one upload per (user, NFC name, size) at a time: see the module docstring."""

    def __init__(self) -> None:
        self._busy: dict[tuple[str, str, int], asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def hold(self, user_id: str, name: str, size: int) -> AsyncIterator[None]:
        key = (user_id, nfc(name), size)
        while key in self._busy:  # a look-alike is in flight: wait for it
            await self._busy[key].wait()
        self._busy[key] = asyncio.Event()
        try:
            yield
        finally:
            self._busy.pop(key).set()


Claimed = Callable[[str], Awaitable[set[str]]]
_SAME: Any = object()   # reconcile(): "as the upload says"


class Uploader:
    """Sends :class:`Upload`s for a job.  ``claimed(user_id)``: the user's documents that already
    belong to some file (never adopted for another by a reconcile)."""

    def __init__(self, ctx: RunContext, claimed: Claimed):
        self.ctx = ctx
        self.claimed = claimed

    async def send(self, up: Upload, *, intent: Callable[[float], Awaitable[None]],
                   unchanged: Callable[[], Awaitable[bool]]) -> tuple[RemoteFile, bool]:
        """POST the file, retrying per the shared policy; after an unknown outcome, reconcile before
        sending again.  Returns the remote file and whether it was adopted (found, not answered).

        ``intent(since)`` must make the intent durable before it returns; ``unchanged()`` says whether
        the source still holds what was hashed.  Raises ``UserRejected`` (401), ``EndpointMissing``
        (404), ``Stopping``, ``ItemError``, or the last error once the attempts are spent."""
        ctx = self.ctx
        policy = ctx.policy
        since: float | None = None
        last: BaseException | None = None
        for attempt in range(1, policy.attempts + 1):
            if ctx.stopping:
                raise Stopping()
            # (The first try follows the caller's own check; a retry looks again.)
            if attempt > 1 and not await unchanged():
                raise ItemError("the file changed before it was uploaded; it will be uploaded next run")
            now = time.time()
            since = now if since is None else since
            await intent(since)
            try:
                remote = await ctx.client.upload(up.path, category=up.category, token=up.token, filename=up.name,
                                                 body=up.body)
            except AuthError:
                raise UserRejected() from None
            except NotFoundError as exc:  # no upload endpoint there: every file would fail the same way
                raise EndpointMissing(f"the server has no upload endpoint at {exc.url} (404): check api.base_url"
                                      ) from None
            except UploadOutcomeUnknown as exc:
                last = exc
                self._retry_note(up, exc, attempt)
                await policy.sleep(policy.wait_for(exc, attempt))  # a moment for the store to show
                found = await self.reconcile(up, since)
                if found is not None:
                    return found, True
                continue
            except TransientError as exc:  # refused before anything was stored: safe to send again
                last = exc
                if attempt < policy.attempts:
                    self._retry_note(up, exc, attempt)
                    await policy.sleep(policy.wait_for(exc, attempt))
                continue
            except FileNotFoundError:
                raise ItemError("the file disappeared before it was uploaded") from None
            except OSError as exc:
                raise ItemError(f"cannot read the file: {exc.strerror or exc}") from None
            ctx.stats.bytes_moving += up.size
            if not await unchanged():
                await self._settle_torn(up, remote)
            return remote, False
        assert last is not None
        raise last

    def _retry_note(self, up: Upload, exc: BaseException, attempt: int) -> None:
        self.ctx.log_event("upload_retry", level=logging.DEBUG, user=up.user_id, item=up.label,
                           attempt=attempt, error_class=error_class(exc))

    async def _settle_torn(self, up: Upload, remote: RemoteFile) -> None:
        """The source changed while it was being sent.  Keep the stored copy only if it is exactly what
        was hashed; otherwise delete it (best effort) and fail the item, to be sent next run."""
        try:
            clean = await self.remote_sha(remote) == up.sha256
        except ApiError:
            clean = False
        if clean:
            return  # recorded as the upload of what was hashed; the next run sends the new content
        detail = f"the stored copy {remote.id} was deleted"
        try:
            await self.ctx.client.delete(remote.id)
        except ApiError as exc:
            detail = f"the stored copy {remote.id} could not be deleted ({error_class(exc)}): delete it by hand"
        raise ItemError(f"the file changed while it was being uploaded; {detail}; it will be uploaded next run")

    async def reconcile(self, up: Upload, since: float | None, *, size: Any = _SAME,
                        sha256: Any = _SAME) -> RemoteFile | None:
        """The user's document that an earlier POST of this file stored, or None if there is none.
        ``size``/``sha256`` override the upload's: what the earlier attempt sent (None: not known)."""
        ctx = self.ctx
        size = up.size if size is _SAME else size
        sha = up.sha256 if sha256 is _SAME else sha256
        try:
            listing = await ctx.client.list_files(Target("user", up.user_id), category=up.category,
                                                  token=up.token)
        except AuthError:
            raise UserRejected() from None
        claimed = await self.claimed(up.user_id)
        want = {nfc(up.name), nfc(form_name(up.name))}
        floor = (since or 0.0) - CLOCK_SLACK
        candidates = []
        for f in listing:
            if f.id in claimed or size is None or f.size != size:
                continue
            if f.created is not None and since is not None and f.created < floor:
                continue
            name = nfc(f.name)
            exact = name in want
            if exact or any(name.endswith(w) for w in want):  # a server may prefix a date: the hash decides
                candidates.append((not exact, f.created or 0, f.id, f))
        candidates.sort(key=lambda c: c[:3])
        if not sha:  # no hash to prove it (should not happen: intents carry one): only an exact twin
            exact_ones = [c[3] for c in candidates if not c[0]]
            return exact_ones[0] if len(exact_ones) == 1 else None
        for *_, f in candidates:
            try:
                if await self.remote_sha(f) == sha:
                    return f
            except NotFoundError:
                continue  # deleted since the listing: not ours to adopt
        if not listing.complete:
            raise ItemError("cannot tell whether an earlier upload was stored (the listing had unreadable"
                            " items); not sending it again blindly")
        return None

    async def remote_sha(self, f: RemoteFile) -> str:
        """sha256 of a stored document's bytes (downloaded, never kept)."""
        ctx = self.ctx

        async def once() -> str:
            url = f.fullpath
            for _ in range(LINK_REFRESHES + 1):
                if not url:
                    url = (await ctx.client.file_info(f.id)).fullpath
                h = hashlib.sha256()
                try:
                    async with ctx.client.download(url) as dl:  # type: ignore[arg-type]
                        async for chunk in dl.iter_chunks(limit=f.size):
                            h.update(chunk)
                except LinkExpiredError:
                    url = None
                    continue
                return h.hexdigest()
            raise LinkExpiredError(f"file {f.id}: the view link kept expiring")

        return await ctx.policy.call(once)
