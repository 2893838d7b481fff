"""Logging setup (text or JSON lines) and the redaction of secrets.

Every record passes through :class:`RedactingFilter`: a signed link's query (``auth_code=…``) and any
token registered with :func:`register_secret` are replaced before a handler sees the text.  Patient
file names are never put in info-level records by syncer's own code; ids are.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from syncer.errors import SyncerError

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_QUERY = re.compile(r"(auth_code|token|api_?key)=[^&\s'\"<>]*", re.IGNORECASE)
_HEADER = re.compile(r"(X-ApiToken['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Mask this value wherever it would appear in a log record or a scrubbed message."""
    # Shorter values would mask ordinary words in messages; real tokens are far longer.
    if value and len(value) >= 8:
        with _LOCK:
            _SECRETS.add(value)


def scrub(text: str) -> str:
    """Remove signed-link queries, token headers and registered secrets from ``text``."""
    text = _QUERY.sub(lambda m: f"{m.group(1)}=<redacted>", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}<redacted>", text)
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def describe(exc: BaseException) -> str:
    """A secret-free one-line description of any exception, ours or foreign."""
    return scrub(str(exc)) if isinstance(exc, SyncerError) else scrub(f"{type(exc).__name__}: {exc}")


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            # Tracebacks of foreign exceptions can hold full URLs: keep only the scrubbed summary.
            exc = record.exc_info[1]
            record.msg = f"{record.msg} [{type(exc).__name__}: {scrub(str(exc))}]"
            record.exc_info = None
            record.exc_text = None
        for key, value in list(vars(record).items()):
            if key.startswith("ev_") and isinstance(value, str):
                setattr(record, key, scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key.startswith("ev_"):
                out[key[3:]] = value
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k[3:]}={v}" for k, v in vars(record).items() if k.startswith("ev_") and k != "ev_event")
        ts = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        msg = record.getMessage()
        return f"{ts} {record.levelname:<7} {msg}" + (f" {extras}" if extras else "")


def setup(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> logging.Handler:
    """Configure the ``syncer`` logger once per process (idempotent); returns its handler."""
    logger = logging.getLogger("syncer")
    for h in list(logger.handlers):
        if getattr(h, "_syncer", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._syncer = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    # aiohttp and asyncio log exceptions with full URLs: route them through the same filter.
    for name in ("aiohttp", "asyncio"):
        other = logging.getLogger(name)
        other.addFilter(RedactingFilter())
    return handler


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, message: str | None = None,
          **fields: Any) -> None:
    """Log one structured event: JSON keys in json mode, ``key=value`` pairs in text mode."""
    if not logger.isEnabledFor(level):
        return
    extra = {f"ev_{k}": v for k, v in fields.items() if v is not None}
    extra["ev_event"] = name
    logger.log(level, scrub(message) if message else name, extra=extra)
