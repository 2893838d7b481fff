"""The object store's failures as syncer's errors: one translation (:func:`translate`) for every obstore
call, so no message ever holds a URL, a key (file names are patient data) or a secret.

May import: ``syncer.errors``, ``syncer.logs``; obstore lazily.  Imported by ``syncer.store.s3`` and the
rest of ``syncer.store``.
"""

from __future__ import annotations

import html
import re

from syncer.errors import AuthError, ConfigError, ItemError, TransientError
from syncer.logs import scrub


class StoreAccessError(AuthError):
    """The object store rejected the credentials or denied access: the run stops (exit 3)."""


class StoreUnavailable(TransientError):
    """The object store failed (5xx after obstore's retries, connection): the item is retried."""


class StoreItemError(ItemError):
    """The object store refused one object (e.g. a key taken by other bytes)."""


# -- errors -----------------------------------------------------------------------------------------
_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(r"<Message>([^<]{1,300})</Message>")
_STATUS = re.compile(r"status code: (\d{3})")
_ACCESS = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
           "AllAccessDisabled", "AccountProblem", "InvalidSecurity")


def _printable(text: str) -> str:
    text = html.unescape(text)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def translate(exc: BaseException, what: str) -> Exception:
    """Our error for an obstore failure while doing ``what``; never holds a URL, key or secret."""
    import obstore.exceptions as oe

    text = str(exc)
    code = m.group(1) if (m := _CODE.search(text)) else None
    message = _printable(m.group(1)) if (m := _MESSAGE.search(text)) else None
    status = int(m.group(1)) if (m := _STATUS.search(text)) else None
    detail = ": ".join(x for x in (code, message) if x) or type(exc).__name__
    if status:
        detail += f" (HTTP {status})"
    msg = scrub(f"object store: {what}: {detail}")
    if isinstance(exc, (oe.PermissionDeniedError, oe.UnauthenticatedError)) or code in _ACCESS \
            or status in (401, 403):
        return StoreAccessError(msg)
    if code == "NoSuchBucket":
        return ConfigError(msg)
    if isinstance(exc, (oe.NotFoundError, FileNotFoundError)) or status == 404:
        return StoreItemError(msg)
    if isinstance(exc, (oe.AlreadyExistsError, oe.PreconditionError)) or status in (409, 412):
        return StoreItemError(msg)
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        return StoreItemError(msg)
    return StoreUnavailable(msg)
