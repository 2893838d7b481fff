"""Logging setup (text or JSON lines), with every record passed through :mod:`syncer.redact`.

Every record passes through :class:`RedactingFilter`: a signed link's query (``auth_code=…``) and any
token registered with :func:`syncer.redact.register_secret` are replaced before a handler sees the
text.  The formatters then make server-supplied text safe for a terminal: the text format escapes
control, bidi and separator characters (:func:`syncer.redact.escape`), the JSON format is pure ASCII.
Patient file names are never put in info-level records by syncer's own code; ids are.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from syncer.errors import SyncerError
from syncer.redact import escape, json_text, register_secret, scrub

# ``register_secret`` and ``scrub`` live in syncer.redact; named here too for older callers.
__all__ = ["JsonFormatter", "RedactingFilter", "TextFormatter", "describe", "event", "register_secret", "scrub",
           "setup"]


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
        return json_text(out)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Ids and messages can come from the server: one record is one line, with nothing a terminal acts on.
        extras = " ".join(f"{k[3:]}={escape(v)}" for k, v in vars(record).items()
                          if k.startswith("ev_") and k != "ev_event")
        ts = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        msg = escape(record.getMessage())
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
