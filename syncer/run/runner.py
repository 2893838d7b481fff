"""The harness every run shares: lock, manifest, run row, HTTP session, recorder, signals, summary.

A job (pull or push) gets a :class:`RunContext` and only has to do its work; how a run starts,
stops, reports and turns into an exit code lives here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from syncer import exitcodes
from syncer.api.retry import RetryPolicy
from syncer.config import Config
from syncer.errors import SyncerError, error_class
from syncer.local.lock import RunLock
from syncer.logs import describe, event
from syncer.manifest import Manifest
from syncer.manifest.recorder import Recorder
from syncer.redact import register_secret
from syncer.run.signals import on_stop_signals
from syncer.run.stats import RunStats

log = logging.getLogger("syncer.run")

STOP_GRACE = 5.0  # seconds in-flight items get to finish after SIGINT/SIGTERM


@dataclass
class RunContext:
    cfg: Config
    client: Any                      # syncer.api.client.FilesClient
    manifest: Manifest
    recorder: Recorder
    stats: RunStats
    policy: RetryPolicy
    run_id: str
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    fatal_error: BaseException | None = None
    signal_received: int | None = None

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def fatal(self, exc: BaseException) -> None:
        """A failure that ends the run (rejected token, disk full): stop starting anything new."""
        if self.fatal_error is None:
            self.fatal_error = exc
            event(log, "fatal", level=logging.ERROR, error_class=error_class(exc),
                  message=f"stopping the run: {describe(exc)}")
        self.stop_event.set()

    def log_event(self, name: str, *, level: int = logging.INFO, message: str | None = None,
                  **fields: Any) -> None:
        event(logging.getLogger(f"syncer.{self.stats.kind}"), name, level=level, message=message,
              run_id=self.run_id, **fields)


class Job(Protocol):
    """What ``execute`` runs: made from the run's context and the job's options, then run once."""

    kind: ClassVar[str]

    def __init__(self, ctx: RunContext, opts: Any) -> None: ...

    async def run(self) -> None: ...


async def execute(
    job_cls: type[Job],
    cfg: Config,
    opts: Any,
    *,
    token: str,
    concurrency: int,
    details: dict[str, Any] | None = None,
    on_progress: Callable[[RunStats], Awaitable[None]] | None = None,
    client_factory: Callable[..., Any] | None = None,
    hooks: Any = None,
) -> tuple[RunStats, int]:
    """Run ``job_cls(ctx, opts).run()`` under the manifest's lock; returns the stats and the exit code.

    ``hooks`` (optional): ``await hooks.before_open(manifest_path)`` under the lock before the manifest
    is opened, ``await hooks.after_run(manifest_path)`` after it is closed, whatever the outcome (an
    ``s3://`` pull's manifest snapshot: ``syncer.store.snapshot``)."""
    kind = job_cls.kind
    from syncer.api.client import API_CONNECTIONS, FilesClient, make_session

    register_secret(token)
    manifest_path = Path(cfg.manifest.path)
    Manifest.check(manifest_path)  # a manifest that cannot be used is refused before anything is written
    with RunLock(manifest_path):
        if hooks is not None:
            await hooks.before_open(manifest_path)
        manifest = Manifest.open(manifest_path)
        result: tuple[RunStats, int] | None = None
        try:
            await manifest.call(manifest.mark_abandoned_runs)
            run_id = await manifest.call(manifest.start_run, kind, details or {})
            stats = RunStats(kind=kind, run_id=run_id)
            policy = RetryPolicy.from_config(cfg.retry)
            # Transfers get `concurrency` connections; listings and fresh links a pool of their own.
            async with make_session(cfg.api, limit=concurrency) as session, \
                    make_session(cfg.api, limit=API_CONNECTIONS) as api_session:
                client = (client_factory or FilesClient)(
                    session, base_url=cfg.api_base_url(), token=token, account_code=cfg.api.account_code,
                    retry=policy, api_session=api_session)
                recorder = Recorder(manifest, run_id)
                ctx = RunContext(cfg, client, manifest, recorder, stats, policy, run_id)
                try:
                    async with recorder:
                        await _run_with_signals(ctx, job_cls(ctx, opts), on_progress)
                except SyncerError as exc:
                    # The recorder could not write (disk full or I/O error under the manifest): the run
                    # is over.  Files finished since its last batch are on disk, unrecorded: the next
                    # run adopts them.
                    ctx.fatal(exc)
            stats.ended = stats.ended or time.time()
            if ctx.fatal_error is not None:
                stats.outcome = "fatal"
                stats.fatal_error = describe(ctx.fatal_error)
            elif ctx.signal_received is not None:
                stats.outcome = "interrupted"
            elif stats.any_failed:
                stats.outcome = "failed"
            else:
                stats.outcome = "ok"
            try:
                await manifest.call(manifest.finish_run, run_id, stats.outcome, stats.counts())
            except SyncerError as exc:
                if ctx.fatal_error is None:
                    raise
                # Already stopping for a fatal error (often this very disk): report that one; the
                # run's row stays 'running' and the next run marks it killed.
                log.warning("cannot record the end of the run: %s", describe(exc))
            result = stats, exitcodes.for_run(stats.outcome, ctx.signal_received)
        finally:
            manifest.close()
            if hooks is not None:
                try:
                    await hooks.after_run(manifest_path)
                except Exception as exc:  # noqa: BLE001 - reported, and the run is not green
                    # The files are stored, but the manifest is not where the next pod looks for it.
                    log.error("cannot save the run's manifest after the run: %s", describe(exc))
                    if result is not None:
                        stats = result[0]
                        stats.outcome, stats.fatal_error = "fatal", describe(exc)
                        result = stats, exitcodes.FATAL
        assert result is not None
        return result


async def _run_with_signals(ctx: RunContext, job: Job,
                            on_progress: Callable[[RunStats], Awaitable[None]] | None) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(job.run(), name=f"{ctx.stats.kind}-job")
    reporter = asyncio.create_task(on_progress(ctx.stats)) if on_progress else None

    def on_signal(signum: int) -> None:
        if ctx.signal_received is not None:  # the second one: stop at once
            task.cancel()
            return
        ctx.signal_received = signum
        event(log, "stopping", level=logging.WARNING, run_id=ctx.run_id,
              message=f"{signal.Signals(signum).name} received: finishing the files in flight"
                      f" (up to {STOP_GRACE:.0f} s); send it again to stop at once")
        ctx.stop_event.set()
        loop.call_later(STOP_GRACE, task.cancel)

    try:
        with on_stop_signals(on_signal):
            try:
                await task
            except asyncio.CancelledError:
                if ctx.signal_received is None:
                    raise
            except SyncerError as exc:
                ctx.fatal(exc)
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
        ctx.stats.ended = time.time()
