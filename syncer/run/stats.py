"""A run's counters: updated by the pipelines, read by progress, the summary and the metrics file."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class RunStats:
    kind: str
    run_id: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None
    targets: int = 0            # pull: targets listed; push: users scanned
    files_total: int = 0        # items to transfer in this run (known so far)
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0         # bytes of finished items
    bytes_moving: int = 0       # bytes transferred so far, finished or not (for the rate)
    failed: int = 0             # failed this run; retried next run
    permanent: int = 0          # the server says it will fail again (404, 400, 413, unsafe name): red
    skipped: int = 0            # already up to date (stored, unchanged)
    left_out: int = 0           # left out by rule, neither up to date nor failed (a symlink, a visit file)
    adopted: int = 0            # push: uploads found on the server after a lost answer
    acknowledged: int = 0       # failed permanently again, but an operator acknowledged it: not red
    targets_failed: int = 0     # pull: targets whose listing failed (their files unknown: red)
    targets_empty: int = 0      # pull: targets that listed no files (often a mistyped id: reported)
    # Items failed in this run (failed + permanent), by error class: the metrics' ``reason`` label.
    failed_reasons: dict[str, int] = field(default_factory=dict)
    outcome: str = "running"    # ok | failed | fatal | interrupted
    fatal_error: str | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    def as_dict(self) -> dict:
        d = asdict(self)
        d["elapsed"] = round(self.elapsed, 3)
        return d

    @property
    def any_failed(self) -> bool:
        """Whether anything selected is not backed up (and not acknowledged): the run is red (exit 1)."""
        return bool(self.failed or self.permanent or self.targets_failed)

    def count_failure(self, kind: str, reason: str) -> None:
        """One item failed: ``kind`` "failed" (retried next run), "permanent" or "acknowledged"."""
        if kind == "acknowledged":
            self.acknowledged += 1
            return
        if kind == "permanent":
            self.permanent += 1
        else:
            self.failed += 1
        self.failed_reasons[reason] = self.failed_reasons.get(reason, 0) + 1

    def counts(self) -> dict[str, int]:
        return {"files_done": self.files_done, "bytes_done": self.bytes_done,
                "failed": self.failed + self.permanent + self.targets_failed, "skipped": self.skipped + self.left_out}
