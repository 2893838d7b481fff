"""``syncer verify``: re-hash backed-up files against the manifest's sizes and SHA-256 digests.

The files checked are the pull items the manifest says are on disk: state ``done``, and
``remote_deleted`` ones with a recorded sha256 (a backup keeps a file the server deleted).  Each is
looked up under ``pull.dest`` at its recorded ``local_path`` and classified:

- ``ok``: a regular file with the recorded size and digest;
- ``missing``: nothing at that path;
- ``changed``: a different size or digest, or not a regular file any more (a symlink, a folder),
  or a path that now leads outside the destination through a symlinked folder;
- ``unreadable``: it exists but cannot be read (permissions, an I/O error).

Decisions:

- The default is a random sample of ``DEFAULT_SAMPLE`` (100) files: a quick spot check an operator
  can run any time; ``--all`` re-reads the whole backup (hours for terabytes: schedule it).  A
  sample larger than the backup checks everything.  The sample is chosen in SQL (``ORDER BY
  random() LIMIT n``: SQLite keeps only the n rows it is choosing), then sorted by path so the disk
  reads folders in order; ``--all`` reads the manifest a page at a time in path order.  Either way
  memory stays flat at a million rows, and no read transaction stays open while files are hashed.
- Sizes are compared first (a ``stat``); a file whose size differs is ``changed`` without hashing.
- Hashing runs in ``workers`` threads (default 2-4; hashlib releases the GIL on large updates), at
  most ``4 * workers`` files in flight, so memory stays flat for any number of files.
- Read only: the manifest is opened read-only and nothing is recorded.  Results go to stdout (and
  the exit code); a later version may record them as an event.
- A pull that is running may replace a file while it is being checked (a changed remote file is
  fetched again): run verify between runs, or re-check the files it reports.
- Encrypted files (age, ``encrypted`` in the manifest): without a key the stored object is checked
  (its size and sha256: a flipped byte or a truncation is ``changed``).  With ``identities``
  (``verify --decrypt --identity FILE``) each is decrypted and its plaintext size and sha256 compared
  with the recorded ones; a file that fails age's authentication is ``changed``.  A file no identity
  opens is ``changed`` too, and counted in ``no_key``: when no file checked could be opened at all,
  the CLI says the key is wrong (exit 2) instead of reporting every file changed.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from syncer.local.storage import UnsafePathError, ensure_inside, sha256_file
from syncer.manifest import Manifest
from syncer.redact import escape as _safe
from syncer.report.progress import human_bytes

DEFAULT_SAMPLE = 100
MISSING, CHANGED, UNREADABLE = "missing", "changed", "unreadable"


def default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 1))


@dataclass
class Problem:
    kind: str                       # missing | changed | unreadable
    target: str                     # TYPE:ID
    file_id: str
    local_path: str                 # relative to dest, as recorded in the manifest
    detail: str
    expected_size: int | None = None
    actual_size: int | None = None
    expected_sha256: str | None = None
    actual_sha256: str | None = None


@dataclass
class VerifyReport:
    manifest: str
    dest: str
    mode: str                       # "all" or "sample"
    eligible: int = 0               # files the manifest says are backed up
    checked: int = 0
    ok: int = 0
    bytes_hashed: int = 0
    decrypted: int = 0              # encrypted files opened with the identities given
    no_key: int = 0                 # encrypted files none of the identities opens
    not_backed_up: int = 0          # files the manifest knows that are not backed up (failed, never fetched)
    acknowledged: int = 0           # of the files not backed up, those an operator acknowledged (syncer ack)
    targets_not_listed: int = 0     # targets whose listing failed: their files are unknown, so not backed up
    elapsed: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        # A backup missing files is not whole, however well the files it has hash: never "passed" then.
        return not self.problems and not self.not_backed_up and not self.targets_not_listed

    def of_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "problems"}
        out["elapsed"] = round(self.elapsed, 3)
        out["passed"] = self.passed
        for kind in (MISSING, CHANGED, UNREADABLE):
            out[kind] = [asdict(p) for p in self.of_kind(kind)]
        return out


def check_file(dest: Path, row: dict[str, Any], identities: list[Any] | None = None) -> tuple[Problem | None, int]:
    """Check one manifest row against its file; (the problem or None, bytes hashed).  Blocking."""
    encrypted = bool(row.get("encrypted"))
    if encrypted:
        expected_size, expected_sha = row.get("stored_size"), row.get("stored_sha256")
    else:
        expected_size, expected_sha = row["size"], row["sha256"]

    def problem(kind: str, detail: str, actual_size: int | None = None, actual_sha: str | None = None) -> Problem:
        return Problem(kind, f"{row['target_type']}:{row['target_id']}", row["file_id"], row["local_path"],
                       detail, expected_size, actual_size, expected_sha, actual_sha)

    try:
        path = ensure_inside(dest, row["local_path"])
        st = os.lstat(path)
    except UnsafePathError:
        return problem(CHANGED, "its path now leads outside the destination (a symlinked folder)"), 0
    except (FileNotFoundError, NotADirectoryError):
        return problem(MISSING, "no file at this path"), 0
    except (OSError, ValueError) as exc:
        return problem(UNREADABLE, f"cannot stat it: {getattr(exc, 'strerror', None) or exc}"), 0
    if stat.S_ISLNK(st.st_mode):
        return problem(CHANGED, "replaced by a symbolic link"), 0
    if not stat.S_ISREG(st.st_mode):
        return problem(CHANGED, "not a regular file"), 0
    if expected_size is not None and st.st_size != expected_size:
        return problem(CHANGED, f"size {st.st_size}, expected {expected_size}", st.st_size), 0
    if encrypted and identities:
        return _check_plaintext(path, row, identities, problem)
    try:
        size, digest = sha256_file(path)
    except UnsafePathError:
        return problem(CHANGED, "replaced by a symbolic link or a special file"), 0
    except FileNotFoundError:
        return problem(MISSING, "no file at this path"), 0
    except OSError as exc:
        return problem(UNREADABLE, f"cannot read it: {exc.strerror or exc}"), 0
    if expected_size is not None and size != expected_size:
        return problem(CHANGED, f"size {size}, expected {expected_size}", size, digest), size
    if digest != expected_sha:
        return problem(CHANGED, "content differs from the recorded SHA-256", size, digest), size
    return None, size


def _check_plaintext(path: Path, row: dict[str, Any], identities: list[Any],
                     problem: Callable[..., Problem]) -> tuple[Problem | None, int]:
    """Decrypt an age file and compare its plaintext with the recorded size and sha256."""
    from syncer.crypto.stream import DecryptFailed, NoMatchingKey, decrypt_sha256

    def plain_problem(kind: str, detail: str, size: int | None = None, sha: str | None = None) -> Problem:
        p = problem(kind, detail, size, sha)
        p.expected_size, p.expected_sha256 = row["size"], row["sha256"]
        return p

    try:
        size, digest = decrypt_sha256(path, identities)
    except NoMatchingKey as exc:
        p = plain_problem(CHANGED, f"cannot decrypt it: {exc}")
        p.detail = "no_key: " + p.detail
        return p, 0
    except DecryptFailed as exc:
        return plain_problem(CHANGED, f"it fails age's authentication: {exc}"), 0
    except UnsafePathError:
        return plain_problem(CHANGED, "replaced by a symbolic link or a special file"), 0
    except FileNotFoundError:
        return plain_problem(MISSING, "no file at this path"), 0
    except OSError as exc:
        return plain_problem(UNREADABLE, f"cannot read it: {exc.strerror or exc}"), 0
    if row["size"] is not None and size != row["size"]:
        return plain_problem(CHANGED, f"decrypted size {size}, expected {row['size']}", size, digest), size
    if digest != row["sha256"]:
        return plain_problem(CHANGED, "decrypted content differs from the recorded SHA-256", size, digest), size
    return None, size


ProgressFn = Callable[[int, int, int], None]  # (checked, total, bytes hashed)


def verify(manifest_path: str | os.PathLike, dest: str | os.PathLike, *, sample: int | None = DEFAULT_SAMPLE,
           workers: int | None = None, on_progress: ProgressFn | None = None,
           identities: list[Any] | None = None) -> VerifyReport:
    """Check ``sample`` random backed-up files (``None``: all of them); ManifestError without a manifest.
    ``identities``: decrypt encrypted files and check their plaintext (see the module docstring)."""
    started = time.monotonic()
    manifest = Manifest.open(Path(manifest_path), create=False, readonly=True)
    try:
        eligible = manifest.pull_done_count()
        not_backed_up, acknowledged = manifest.pull_not_backed_up()
        targets_not_listed = manifest.pull_targets_not_listed()
        report = VerifyReport(manifest=str(manifest_path), dest=str(dest),
                              mode="all" if sample is None else "sample", eligible=eligible,
                              not_backed_up=not_backed_up, acknowledged=acknowledged,
                              targets_not_listed=targets_not_listed)
        if sample is None or sample >= eligible:
            total, rows = eligible, (row for page in manifest.pull_done_pages() for row in page)
        else:
            chosen = sorted(manifest.pull_done_sample(sample), key=lambda r: r["local_path"])
            total, rows = len(chosen), iter(chosen)
        _check_all(Path(dest), rows, total, report, workers or default_workers(), on_progress, identities)
    finally:
        manifest.close()
    report.problems.sort(key=lambda p: (p.kind, p.local_path))
    report.elapsed = time.monotonic() - started
    return report


def _check_all(dest: Path, rows: Iterator[dict[str, Any]], total: int, report: VerifyReport, workers: int,
               on_progress: ProgressFn | None, identities: list[Any] | None = None) -> None:
    pending = rows
    window = 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        inflight: set[Future[tuple[Problem | None, int]]] = set()
        try:
            while True:
                for row in pending:
                    fut = pool.submit(check_file, dest, row, identities)
                    fut.encrypted = bool(row.get("encrypted"))  # type: ignore[attr-defined]
                    inflight.add(fut)
                    if len(inflight) >= window:
                        break
                if not inflight:
                    break
                finished, inflight = wait(inflight, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    problem, nbytes = fut.result()
                    report.checked += 1
                    report.bytes_hashed += nbytes
                    if problem is None:
                        report.ok += 1
                    else:
                        report.problems.append(problem)
                    if identities and row_encrypted(fut):
                        if problem is not None and problem.detail.startswith("no_key: "):
                            report.no_key += 1
                            problem.detail = problem.detail[len("no_key: "):]
                        elif problem is None or problem.actual_sha256 is not None:
                            report.decrypted += 1  # opened with the key (its plaintext compared)
                if on_progress is not None:
                    on_progress(report.checked, total, report.bytes_hashed)
        except BaseException:
            # Ctrl-C or a bug: do not start the queued files; only those being hashed finish.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def row_encrypted(fut: Future[Any]) -> bool:
    return bool(getattr(fut, "encrypted", False))


# -- output --------------------------------------------------------------------------------------
def render_text(report: VerifyReport) -> str:
    scope = "all" if report.mode == "all" or report.checked >= report.eligible else "a random sample"
    lines = [
        f"verify: checked {report.checked} of {report.eligible} backed-up files ({scope}) under "
        f"{_safe(report.dest)} in {report.elapsed:.1f}s, {human_bytes(report.bytes_hashed)} hashed: "
        f"{report.ok} ok, {len(report.of_kind(MISSING))} missing, {len(report.of_kind(CHANGED))} changed, "
        f"{len(report.of_kind(UNREADABLE))} unreadable"
    ]
    if report.decrypted or report.no_key:
        lines.append(f"decrypted with the identity given: {report.decrypted} encrypted files"
                     + (f"; {report.no_key} it does not open" if report.no_key else ""))
    if report.not_backed_up:
        lines.append(f"not whole: {report.not_backed_up} files the manifest knows are not backed up (failed or"
                     " not fetched yet): see syncer status")
    if report.targets_not_listed:
        lines.append(f"not whole: {report.targets_not_listed} targets could not be listed, so their files are"
                     " unknown and not backed up: see syncer status")
    if report.acknowledged:
        lines.append(f"{report.acknowledged} files not backed up were acknowledged by an operator (syncer ack)")
    if report.eligible == 0:
        lines.append("nothing to verify: the manifest records no backed-up file yet")
    for p in report.problems:
        # Target and file ids came from the server: escaped like the path and the detail.
        lines.append(f"{p.kind:<10}  {_safe(p.target)}/{_safe(p.file_id)}  {_safe(p.local_path)}  ({_safe(p.detail)})")
    return "\n".join(lines)


class ProgressPrinter:
    """A progress line on ``stream`` for long checks.

    On a terminal: one line rewritten in place (after the first second), cleared at the end.
    Elsewhere: a plain line every ``interval`` seconds, no control characters.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, interval: float = 30.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = 0.25 if self.tty else interval
        self.started = time.monotonic()
        self.next_at = self.started + (1.0 if self.tty else interval)
        self.shown = False

    def __call__(self, checked: int, total: int, nbytes: int) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.interval
        rate = nbytes / max(now - self.started, 1e-6)
        line = f"verify: {checked}/{total} files, {human_bytes(nbytes)} hashed, {human_bytes(rate)}/s"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
