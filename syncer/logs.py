"""Logging setup (text or JSON lines), with every record passed through :mod:`syncer.redact`.

Every record passes through :class:`RedactingFilter`: a signed link's query (``auth_code=…``) and any
token registered with :func:`syncer.redact.register_secret` are replaced before a handler sees the
text.  The formatters then make server-supplied text safe for a terminal: the text format escapes
control, bidi and separator characters (:func:`syncer.redact.escape`), the JSON format is pure ASCII.
Patient file names are never put in info-level records by syncer's own code; ids are.

While a live progress display is on the terminal (:func:`showing_display`), records are printed through
its rich console, which draws them above the bar instead of gluing them to its line.  In JSON mode
everything else a run prints (progress, the summary, a fatal error) is a JSON line too
(:func:`json_line`), so ``2>&1`` of a cron job is JSON lines only.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def _json_doc(created: float, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    out.update(fields)
    return json_text(out)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {key[3:]: value for key, value in vars(record).items() if key.startswith("ev_")}
        return _json_doc(record.created, record.levelname.lower(), record.name, record.getMessage(), fields)


def json_line(logger: str, name: str, message: str, *, level: str = "info", **fields: Any) -> str:
    """One JSON event shaped like a JSON log record (``event`` = ``name``), for what is printed rather
    than logged: progress, the summary, a fatal error.  The message is scrubbed like a record's."""
    return _json_doc(datetime.now(UTC).timestamp(), level, logger, scrub(message), {"event": name, **fields})


_FORMAT = "text"                 # the format of the last setup(): what the CLI prints its own lines in
_DISPLAY: Any = None             # a rich Console drawing a live display, while it does


def current_format() -> str:
    return _FORMAT


def reset_format() -> None:
    global _FORMAT
    _FORMAT = "text"


@contextmanager
def showing_display(console: Any) -> Iterator[None]:
    """While the block runs, log records are printed with ``console.print`` (above its live display)."""
    global _DISPLAY
    _DISPLAY = console
    try:
        yield
    finally:
        _DISPLAY = None


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that hands its lines to the live display's console while one is shown."""

    def emit(self, record: logging.LogRecord) -> None:
        console = _DISPLAY
        if console is None:
            super().emit(record)
            return
        try:
            console.print(self.format(record), markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - as logging does: a broken display must not end the run
            self.handleError(record)


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
    global _FORMAT
    _FORMAT = fmt
    logger = logging.getLogger("syncer")
    for h in list(logger.handlers):
        if getattr(h, "_syncer", False):
            logger.removeHandler(h)
    handler = _Handler(stream or sys.stderr)
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
