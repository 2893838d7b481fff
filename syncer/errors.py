"""The one exception tree of syncer.

Every failure that crosses a module boundary is one of these; foreign exceptions (aiohttp, OSError,
sqlite3) are translated in one place each (``syncer.api.translate`` for the wire, ``syncer.local.storage``
and ``syncer.local.writer`` for the disk, ``syncer.manifest.store`` for SQLite) and re-raised ``from`` the
original.  No message here ever carries a token or a signed view link (URLs pass through
:func:`syncer.redact.redact_url`), nor the server's own words: an ``ApiError``'s message is the status,
the class and a fixed description, and whatever text the server sent is kept apart in ``detail`` (it may
name a patient or a file: never logged; recorded only in the manifest's event detail, the file's name
taken out).

::

    SyncerError
    ├── ConfigError                 bad config, flags, targets or tokens file (exit 2)
    ├── ManifestError               not SQLite, newer schema, corrupt (exit 2 before a run, 3 during)
    ├── LockHeldError               another run holds the manifest's lock (exit 75)
    ├── LocalIOError                disk full, EIO, unwritable dest (fatal: exit 3)
    ├── ItemError                   one file failed; the run goes on (exit 1 at the end)
    │   ├── UnsafeNameError         a remote name that cannot be placed safely (permanent)
    │   │   └── LocalPathError      a local path that leaves the destination (a symlink): not permanent
    │   └── IntegrityError          bytes received differ from the size the server announced
    └── ApiError                    anything the Files API answered or failed to answer
        ├── AuthError               401: token rejected (fatal for that token; the run stops)
        ├── PermanentError          will fail again the same way; never retried
        │   ├── BadRequestError     400
        │   ├── ForbiddenError      403 on an /api_v3 call
        │   ├── NotFoundError       404
        │   ├── TooLargeError       413
        │   ├── InsecureUrlError    a link or redirect in plain http to a host other than this machine
        │   └── ProtocolError       the answer is not what the contract says (bad JSON, missing field)
        ├── LinkExpiredError        403 on a view link: fetch a fresh ``fullpath`` and go on
        ├── TransientError          may work if tried again: retried with backoff
        │   ├── RateLimitedError    429, with ``retry_after`` seconds when the server said
        │   ├── ServerError         5xx
        │   ├── ConnectionFailed    refused, reset, DNS, TLS handshake
        │   ├── TimeoutError_       connect or read timeout
        │   └── TruncatedBody       the body ended before its Content-Length
        └── UploadOutcomeUnknown    a POST was sent but its answer was lost: it may have been stored

What an error means for the run is decided in one place, :func:`classify`:

======================  =====================================================================
``Kind.RETRY``          try the same request again now, with backoff (transient)
``Kind.ITEM``           this item failed; the next run tries it again (ours to fix, or odd)
``Kind.PERMANENT``      this item fails the same way until the remote file changes
``Kind.FATAL``          the run cannot go on: exit 3 (token, a full or failing disk, manifest)
======================  =====================================================================
"""

from __future__ import annotations

import enum
import errno as _errno

from syncer.redact import redact_url


class SyncerError(Exception):
    """Base of every syncer error."""

    # The server's own text about the failure (an error body's message), apart from the message: it
    # may hold patient data, so it is never logged, only recorded in the 0600 manifest's events.
    detail: str | None = None


class ConfigError(SyncerError):
    """Configuration, flags or an input file is wrong; nothing was attempted."""


class ManifestError(SyncerError):
    """The manifest cannot be used (not SQLite, newer schema, corrupt)."""


class LockHeldError(SyncerError):
    """Another run holds the lock on this manifest."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}


class LocalIOError(SyncerError):
    """The local disk failed.  ``errno`` (when known) tells a disk that fails for every file (ENOSPC, EIO,
    EROFS: the run cannot go on) from a place that fails for one folder (EACCES: that item fails)."""

    def __init__(self, message: str, *, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class ItemError(SyncerError):
    """One item failed; the run goes on with the others."""

    permanent = False


class UnsafeNameError(ItemError):
    permanent = True


class LocalPathError(UnsafeNameError):
    """A local path we cannot use as it is (a symbolic link on the way, outside the destination): ours to
    fix, so never permanent."""

    permanent = False


class IntegrityError(ItemError):
    """The bytes received do not match what the server announced."""


class ApiError(SyncerError):
    """The Files API answered with an error, or did not answer."""

    status: int | None = None
    permanent = False

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 detail: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        # Only ever a redacted URL (no query string): safe to log.
        self.url = redact_url(url) if url else None
        self.detail = detail

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.url})" if self.url else base


class AuthError(ApiError):
    status = 401


class PermanentError(ApiError):
    permanent = True


class BadRequestError(PermanentError):
    status = 400


class ForbiddenError(PermanentError):
    status = 403


class NotFoundError(PermanentError):
    status = 404


class TooLargeError(PermanentError):
    status = 413


class InsecureUrlError(PermanentError):
    """A view link or a redirect would send a signed link and patient data in clear over the network
    (plain http to a host that is not a loopback address): refused before anything is sent."""


class ProtocolError(PermanentError):
    """The server's answer does not follow the contract."""


class LinkExpiredError(ApiError):
    status = 403


class TransientError(ApiError):
    """Worth another try after a pause."""

    # Seconds the server asked us to wait (Retry-After on a 429 or 503), when it said.
    retry_after: float | None = None


class RateLimitedError(TransientError):
    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(TransientError):
    pass


class ConnectionFailed(TransientError):
    pass


class TimeoutError_(TransientError):  # noqa: N801 - the builtin name is taken
    pass


class TruncatedBody(TransientError):
    pass


class UploadOutcomeUnknown(ApiError):
    """The request body may have reached the server but no answer came back."""


# A local error with one of these is about one place (a folder we may not write, a name the file system
# refuses), not the disk: that item fails, is retried next run, and the other patients' files go on.
PLACE_ERRNOS = frozenset({_errno.EACCES, _errno.EPERM, _errno.ENOTDIR, _errno.EISDIR, _errno.ELOOP,
                          _errno.ENAMETOOLONG})


class Kind(enum.Enum):
    RETRY = "retry"
    ITEM = "failed"
    PERMANENT = "permanent"
    FATAL = "fatal"


def classify(exc: BaseException, *, upload: bool = False) -> Kind:
    """What ``exc`` means for the run (the table in this module's docstring).

    A cause on our side (an unsafe or unwritable local path) is never permanent: once it is fixed, the
    next run must fetch the file.  An answer that breaks the contract says nothing lasting about the file
    either.  For an upload, only what the contract calls permanent for a file (400, 413) waits for the
    file to change; any other refusal is tried again next run."""
    if isinstance(exc, LocalIOError) and exc.errno in PLACE_ERRNOS:
        return Kind.ITEM
    if isinstance(exc, (AuthError, LocalIOError, ManifestError, ConfigError, LockHeldError)):
        return Kind.FATAL
    if isinstance(exc, TransientError):
        return Kind.RETRY
    if upload:
        return Kind.PERMANENT if isinstance(exc, (BadRequestError, TooLargeError)) else Kind.ITEM
    if isinstance(exc, ProtocolError) or isinstance(exc, LocalPathError):
        return Kind.ITEM
    if isinstance(exc, (ApiError, ItemError)) and exc.permanent:
        return Kind.PERMANENT
    return Kind.ITEM


def is_retryable(exc: BaseException) -> bool:
    """True for errors that a later attempt of the same idempotent call may cure."""
    return classify(exc) is Kind.RETRY


def error_class(exc: BaseException) -> str:
    """A short, secret-free name for logs and the manifest."""
    return type(exc).__name__.rstrip("_")


def detail_of(exc: BaseException) -> str | None:
    """The server's own text about ``exc`` or an error it was raised from (see ``SyncerError.detail``)."""
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            break
        detail = getattr(e, "detail", None)
        if detail:
            return detail
        e = e.__cause__
    return None
