"""``run_async``: the one place that picks the event loop a command runs on.

Apart from :mod:`syncer.run.runner` so that importing it costs nothing: the command line imports it
for every command, and asyncio and uvloop are imported only when a command actually runs a loop
(``syncer --help``, ``status`` and ``ack`` never do; see README, "Start-up").
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from syncer.errors import ConfigError

LOOP_ENV = "SYNCER_EVENT_LOOP"
T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a new event loop: uvloop's where it is installed (a dependency on Linux and macOS;
    why: tests/perf/README.md), else asyncio's own.
    ``SYNCER_EVENT_LOOP=asyncio`` forces asyncio's loop, to rule the loop out when chasing a problem;
    ``uvloop`` insists on uvloop.  Anything else is a ConfigError (exit 2)."""
    choice = os.environ.get(LOOP_ENV, "").strip().lower()
    try:
        if choice not in ("", "auto", "uvloop", "asyncio"):
            raise ConfigError(f"{LOOP_ENV}={choice!r}: use uvloop, asyncio or auto")
        if choice != "asyncio":
            try:
                import uvloop
            except ImportError:
                if choice == "uvloop":
                    raise ConfigError(f"{LOOP_ENV}=uvloop, but uvloop is not installed") from None
            else:
                return uvloop.run(main)
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    import asyncio

    return asyncio.run(main)
