"""Small one-off remote operations for the CLI (``syncer ls``, ``pull --dry-run``)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from syncer.api.retry import RetryPolicy
from syncer.config import Config
from syncer.errors import ConfigError
from syncer.logs import register_secret
from syncer.models import Target


@contextlib.asynccontextmanager
async def open_client(cfg: Config, token: str, *, limit: int = 8) -> AsyncIterator[Any]:
    from syncer.api.client import FilesClient, make_session

    if not cfg.api.base_url:
        raise ConfigError("api.base_url is not set in the config")
    register_secret(token)
    async with make_session(cfg.api, limit=limit) as session:
        yield FilesClient(session, base_url=cfg.api.base_url, token=token, account_code=cfg.api.account_code,
                          retry=RetryPolicy.from_config(cfg.retry))


async def list_target(cfg: Config, target: str, *, category: str | None = None,
                      include_shared: bool = False) -> list[dict[str, Any]]:
    """One target's files as plain rows, without any view link."""
    tgt = Target.parse(target)
    token = cfg.api_token()
    async with open_client(cfg, token) as client:
        listing = await client.list_files(tgt, category=category, include_shared=include_shared)
    return [{"id": f.id, "name": f.name, "size": f.size, "category": f.category, "created": f.created,
             "modified": f.modified, "ext": f.ext} for f in listing.files]


async def run_dry(cfg: Config, opts: Any, token: str) -> list[Any]:
    """List and plan against the manifest (read only) and report what a pull would fetch."""
    from syncer.manifest import Manifest
    from syncer.pull.job import PullJob
    from syncer.run.runner import RunContext
    from syncer.run.stats import RunStats

    path = Path(cfg.manifest.path)
    with tempfile.TemporaryDirectory(prefix="syncer-dry-") as tmp:
        manifest = Manifest.open(path, readonly=True) if path.exists() else Manifest.open(Path(tmp) / "m.sqlite")  # noqa: ASYNC240
        try:
            async with open_client(cfg, token, limit=opts.concurrency) as client:
                ctx = RunContext(cfg, client, manifest, None, RunStats("pull"),  # type: ignore[arg-type]
                                 client.retry, run_id="dry-run")
                job = PullJob(ctx, opts)
                await job.run()
                if ctx.fatal_error is not None:
                    raise ctx.fatal_error
                return job.dry_run_report
        finally:
            manifest.close()
