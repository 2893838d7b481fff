"""The one table of exit codes: every command, the runner and the demo use these names.

====  ==================================================================================
0     all done, or nothing to do
1     the run finished but some items failed (or are still failed from an earlier run)
2     usage or configuration error; nothing was attempted
3     the run stopped on a fatal error (token rejected, API unreachable, disk or manifest)
75    another run holds the lock on this manifest (EX_TEMPFAIL: try later)
130   stopped by SIGINT after recording what was done
143   stopped by SIGTERM after recording what was done
====  ==================================================================================
"""

from __future__ import annotations

import signal

from syncer.errors import ConfigError, LockHeldError, ManifestError

OK = 0
ITEMS_FAILED = 1
USAGE = 2
FATAL = 3
LOCKED = 75
SIGINT = 128 + signal.SIGINT
SIGTERM = 128 + signal.SIGTERM


def for_error(exc: BaseException) -> int:
    """The exit code of a command that ends with ``exc`` before or outside a run."""
    if isinstance(exc, LockHeldError):
        return LOCKED
    if isinstance(exc, (ConfigError, ManifestError)):
        return USAGE
    return FATAL  # LocalIOError, any other SyncerError


def for_run(outcome: str, signal_received: int | None) -> int:
    """The exit code of a finished run, from its outcome (``ok``, ``failed``, ``fatal``, ``interrupted``)."""
    if outcome == "fatal":
        return FATAL
    if signal_received is not None:
        return SIGTERM if signal_received == signal.SIGTERM else SIGINT
    if outcome == "failed":
        return ITEMS_FAILED
    return OK
