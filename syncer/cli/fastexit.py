"""The end of the process: what Python's shutdown does that anyone can see, without the rest.

When a command is over (its output written, the manifest closed, its threads joined), CPython still
tears down every module it imported: ~20 ms after ``syncer status``, ~45 ms after a pull (aiohttp,
asyncio, OpenSSL; measured in README, "Start-up").  None of that teardown is ours: nothing is left to
write.  :func:`exit_now` does what is observable of a normal exit -- the ``atexit`` callbacks
(``logging.shutdown`` among them, which flushes and closes every log handler) and flushing stdout and
stderr -- and then ends the process with the same exit code.

Whenever it cannot be sure, it leaves the ending to Python exactly as before: a thread of the
``threading`` module still alive (Python joins it first), a stream that cannot be flushed (a closed
pipe: Python reports it and exits 120), an exit code that is not a plain number.

Only the process's entry points come here (the ``syncer`` script and ``python -m syncer`` call
``main()``); ``main.main(...)``, which click's ``CliRunner`` and in-process tests use, never does.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: object) -> NoReturn:
    """End the process with ``code`` (what ``sys.exit`` was given) after the atexit callbacks and a flush
    of the standard streams, skipping the interpreter's teardown; else ``raise SystemExit(code)``."""
    if code is None:
        code = 0
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise SystemExit(code)
    if threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()  # the registered callbacks, once: they are cleared after running
    if threading.active_count() > 1:  # a callback started one: Python joins it, as it would have
        raise SystemExit(code)
    for stream in dict.fromkeys((sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: Python's own shutdown reports it
            raise SystemExit(code) from None
    os._exit(code)
