"""Running the fake server on its own: `serve_forever`, `run_blocking` and `python -m syncer.fakeserver`.

`syncer.fakeserver` re-exports all three; `syncer fake-server` uses `run_blocking`, `write_tokens_file`
(the patients' upload tokens in the CSV format of `syncer.inputs.tokens`, so a push can be rehearsed) and
`ListenError` (the port cannot be bound: a message, not a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from syncer.run.signals import on_stop_signals

if TYPE_CHECKING:
    from syncer.fakeserver.server import FakeServer


class ListenError(Exception):
    """The server cannot listen where it was asked to (the port is in use, or not allowed)."""


def write_tokens_file(srv: FakeServer, path: str | os.PathLike[str]) -> Path:
    """Write every seeded patient's upload token to a new file at `path`, mode 0600 from its creation,
    as the CSV a push reads (`user_id,token`).  FileExistsError rather than overwrite anything."""
    path = Path(path)
    text = "user_id,token\n" + "".join(f"{user},{token}\n" for user, token in srv.user_tokens.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@contextlib.contextmanager
def tokens_file_place(path: str | os.PathLike[str] | None) -> Iterator[Path]:
    """Where `syncer fake-server` writes its tokens file: `path` if given (FileExistsError now, before the
    server starts, if something is there already), else `tokens.csv` in a new private (0700) temporary
    folder that is removed, with the file, when the block ends."""
    if path is not None:
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "it exists, and is not overwritten", str(path))
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="syncer-fake-server-") as folder:  # mkdtemp: mode 0700
        yield Path(folder) / "tokens.csv"


async def serve_forever(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Start `srv`, call `on_ready(srv)`, serve until SIGINT/SIGTERM (or cancellation), then stop."""
    stop = asyncio.Event()
    with on_stop_signals(lambda _signum: stop.set()):
        try:
            await srv.start()
        except OSError as exc:
            await srv.stop()  # the half-set-up runner and the server's own data folder
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ListenError(f"cannot listen on {srv.host}:{srv.port}: {why}") from None
        try:
            if on_ready is not None:
                on_ready(srv)
            await stop.wait()
        finally:
            await srv.stop()


def run_blocking(srv: FakeServer, on_ready: Callable[[FakeServer], None] | None = None) -> None:
    """Serve `srv` on a new event loop until SIGINT/SIGTERM: for `syncer fake-server`."""
    asyncio.run(serve_forever(srv, on_ready))


def main(argv: list[str] | None = None) -> None:
    """`python -m syncer.fakeserver`: serve, and print one JSON line with base_url, api_key and tokens."""
    p = argparse.ArgumentParser(prog="python -m syncer.fakeserver", description=main.__doc__)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--files-per-user", type=int, default=5)
    p.add_argument("--visits", type=int, default=2)
    p.add_argument("--files-per-visit", type=int, default=3)
    p.add_argument("--hostile-names", action="store_true")
    p.add_argument("--link-ttl", type=float, default=3600)
    p.add_argument("--data-dir")
    p.add_argument("--conn-rate-mbps", type=float, default=0.0,
                   help="cap each download answer at this many MB/s (10**6 bytes/s); 0: no cap")
    a = p.parse_args(argv)
    from syncer.fakeserver.server import FakeServer, Faults

    srv = FakeServer(
        seed=a.seed, users=a.users, files_per_user=a.files_per_user, visits=a.visits,
        files_per_visit=a.files_per_visit, hostile_names=a.hostile_names, link_ttl=a.link_ttl,
        data_dir=a.data_dir, port=a.port, faults=Faults(conn_rate_mbps=a.conn_rate_mbps),
    )  # fmt: skip

    def ready(s: FakeServer) -> None:
        info = {"base_url": s.base_url, "api_key": s.api_key, "account_code": s.account_code,
                "user_tokens": s.user_tokens, "visits": s.visits}  # fmt: skip
        print(json.dumps(info), flush=True)

    run_blocking(srv, ready)
