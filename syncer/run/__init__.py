"""What every job shares: the run harness and its worker pool.

- ``runner``: ``execute(job class, options)`` opens the lock, the manifest, the run row, the HTTP
  session and the recorder, installs the signal handlers, runs the job and turns the outcome into an
  exit code (``syncer.exitcodes``); ``run_async`` picks the event loop.
- ``stats``: the run's counters (``RunStats``), read by progress, summary and metrics.

May import: ``config``, ``errors``, ``exitcodes``, ``logs``, ``syncer.api``, ``syncer.manifest``,
``syncer.local``.  Imported by: ``cli``, ``demo`` and the jobs (``RunContext``, ``WorkerPool`` in ``pool``).
"""
