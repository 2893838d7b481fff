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
    permanent: int = 0          # failed for good (404, 400, 413, unsafe name)
    skipped: int = 0            # up to date, or not eligible (symlinks, no token)
    adopted: int = 0            # push: uploads found on the server after a lost answer
    outcome: str = "running"    # ok | failed | fatal | interrupted
    fatal_error: str | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended or time.time()) - self.started

    def as_dict(self) -> dict:
        d = asdict(self)
        d["elapsed"] = round(self.elapsed, 3)
        return d

    def counts(self) -> dict[str, int]:
        return {"files_done": self.files_done, "bytes_done": self.bytes_done,
                "failed": self.failed + self.permanent, "skipped": self.skipped}
