"""Every scrubbing and escaping rule of syncer, in one place.

Two kinds of rule, for two kinds of danger:

- **Secrets** (:func:`scrub`, :func:`redact_url`, :func:`register_secret`): a token or a signed view link
  (its ``auth_code``) must never reach a log line, an error message, the manifest or the terminal.
  ``scrub`` cuts every URL's query string and fragment, blanks any ``key=value`` whose key is in
  :data:`SECRET_KEYS` (also outside a URL), masks ``X-ApiToken`` header values and every value
  registered with ``register_secret`` (the API key, each patient's token).
- **Server-supplied text** (:func:`escape`, :func:`without_name`): ids, names and messages come from the
  server and may hold anything.  ``escape`` turns the characters a terminal acts on into visible
  escapes (``\\x1b``, ``\\u202e``) so no id can forge a log line, clear the screen, start a CSI
  sequence (U+009B) or reverse the text around it.  JSON output escapes by construction
  (``json.dumps(..., ensure_ascii=True)``: :func:`json_text`).  ``without_name`` takes a file's name
  out of a server's error text (it may be a patient's document title).

This module imports nothing of syncer: everything else may import it.
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The one list of parameter names whose value is a secret, wherever it appears (a URL's query, a form,
# free text).  Matched case-insensitively, also as the end of a longer name (``access_token``,
# ``X-ApiToken``, ``refresh_token``).
SECRET_KEYS = ("auth_code", "token", "api_key", "apikey", "password", "secret", "signature")
REDACTED = "<redacted>"
NAME_PLACEHOLDER = "<file name>"

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_MIN_SECRET = 8  # shorter values would mask ordinary words in messages; real tokens are far longer

# Each pattern starts only where a word starts (the lookbehinds): without that, a long run of word
# characters is rescanned from every position (quadratic: 6 s for 10,000 characters).
_URL_WITH_QUERY = re.compile(r"""(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://[^\s?#'"<>]*)[?#][^\s'"<>]*""")
_PARAM = re.compile(r"""(?<![\w.-])([\w.-]+)=([^\s&'"<>]*)""")
_HEADER = re.compile(r"(X-ApiToken['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.IGNORECASE)

# What a terminal acts on: C0 controls (CR, LF, ESC, TAB, ...), DEL, C1 controls (U+0080-U+009F; U+009B
# is a one-character CSI), the bidi controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), the line
# and paragraph separators (U+2028/9), and lone surrogates (which cannot even be encoded for output).
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# -- secrets ---------------------------------------------------------------------------------------------

def register_secret(value: str | None) -> None:
    """Mask this value wherever :func:`scrub` sees it (every log record passes through it)."""
    if value and len(value) >= _MIN_SECRET:
        with _LOCK:
            _SECRETS.add(value)


def scrub(text: str) -> str:
    """``text`` without secrets: URL queries and fragments cut off, secret parameters and token headers
    blanked, registered secrets masked."""
    text = _URL_WITH_QUERY.sub(r"\1", text)
    text = _PARAM.sub(_blank_secret_param, text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    with _LOCK:
        secrets = tuple(_SECRETS)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _blank_secret_param(m: re.Match[str]) -> str:
    key = m.group(1)
    return f"{key}={REDACTED}" if key.lower().endswith(SECRET_KEYS) else m.group()


def redact_url(url: object) -> str:
    """The URL without its query string, fragment and credentials: a view link's ``auth_code`` never
    survives."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def redact_link(url: object) -> str:
    """A server-given link (a view link, a redirect's target) as ``scheme://host[:port]/…``: its query is
    a signature and its path may name the file (an object store's key), so only where it points is kept."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable url>"
    host = parts.netloc.rpartition("@")[2]
    if not parts.scheme or not host:
        return "<unusable url>"
    return f"{parts.scheme}://{host}/…"


# -- server-supplied text --------------------------------------------------------------------------------

def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object) -> str:
    """Printable, one-line text for a terminal or a text log: every character a terminal acts on becomes
    a visible escape (``\\n``, ``\\x1b``, ``\\x9b``, ``\\u202e``).  Other characters (accents, CJK, emoji)
    are kept.  A backslash is kept as it is, so escaping twice changes nothing."""
    s = "" if text is None else str(text)
    return _TERMINAL_UNSAFE.sub(_escape_char, s)


def is_terminal_safe(text: str) -> bool:
    """True when :func:`escape` would leave ``text`` unchanged."""
    return _TERMINAL_UNSAFE.search(text) is None


def json_text(obj: Any, *, indent: int | None = None) -> str:
    """JSON for output: pure ASCII, so no control, bidi or separator character passes raw."""
    return json.dumps(obj, indent=indent, ensure_ascii=True, default=str)


def without_name(text: str, *names: str | None) -> str:
    """``text`` (a server's error message) with the file's name taken out, as ``<file name>``: each of
    ``names`` (the name and any form it was sent in), their NFC and NFD forms and their stems (without
    the extension), compared case-insensitively.  Forms shorter than 3 characters are left (they would
    cut words apart); the manifest row still says which file it was."""
    if not text:
        return text
    forms: set[str] = set()
    for name in names:
        if not name:
            continue
        for form in (name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)):
            forms.add(form)
            stem, dot, _ext = form.rpartition(".")
            if dot and stem:
                forms.add(stem)
    for form in sorted((f for f in forms if len(f.strip()) >= 3), key=len, reverse=True):
        text = re.sub(re.escape(form), NAME_PLACEHOLDER, text, flags=re.IGNORECASE)
    return text


def name_id(name: str) -> str:
    """A short, stable id for a local file's name (patient data) where the name itself must not appear:
    logs, ``syncer status``; ``syncer ack push`` accepts it in place of the name."""
    import hashlib

    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]


__all__ = ["NAME_PLACEHOLDER", "REDACTED", "SECRET_KEYS", "escape", "is_terminal_safe", "json_text", "name_id",
           "redact_link", "redact_url", "register_secret", "scrub", "without_name"]
