"""``syncer pull --dry-run``: list and plan against the manifest (opened read only) and report what a
pull would fetch, per target.  Writes nothing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from syncer.config import Config
from syncer.manifest import Manifest
from syncer.pull.job import DryRunTarget, PullJob
from syncer.pull.options import PullOptions
from syncer.report.listing import open_client
from syncer.run.runner import RunContext
from syncer.run.stats import RunStats


async def run_dry(cfg: Config, opts: PullOptions, token: str) -> tuple[list[DryRunTarget], RunStats]:
    """List and plan against the manifest (read only) and report what a pull would fetch, with the
    run's counters (targets that could not be listed are in them: their files are not in the report)."""
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
                return job.dry_run_report, ctx.stats
        finally:
            manifest.close()
