"""Which targets a pull covers: flags, config, a targets file, and --shard."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from syncer.errors import ConfigError
from syncer.models import Target


def parse_targets_file(path: Path) -> list[Target]:
    """One ``TYPE:ID`` a line (``#`` comments, blank lines), or a CSV with ``target_type,target_id``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(f"targets file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"targets file {path}: cannot read it: {exc}") from exc
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    targets: list[Target] = []
    if first.replace(" ", "").lower().startswith("target_type,target_id"):
        reader = csv.reader(io.StringIO(text))
        header_seen = False
        for lineno, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if not header_seen:
                header_seen = True
                continue
            if len(row) != 2:
                raise ConfigError(f"{path}:{lineno}: expected 2 columns (target_type,target_id), got {len(row)}")
            targets.append(_parse(f"{row[0]}:{row[1]}", path, lineno))
        return targets
    for lineno, line in enumerate(lines, start=1):
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            targets.append(_parse(stripped, path, lineno))
    return targets


def _parse(text: str, path: Path, lineno: int) -> Target:
    try:
        return Target.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}:{lineno}: {exc}") from exc


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``K/N`` with 0 <= K < N (K is 0-based, like Kubernetes' JOB_COMPLETION_INDEX)."""
    if text is None or text == "":
        return None
    k, sep, n = text.partition("/")
    try:
        ki, ni = int(k), int(n)
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not K/N (for example 0/4)") from None
    if not sep or ni < 1 or not 0 <= ki < ni:
        raise ConfigError(f"--shard {text!r}: need 0 <= K < N (K counts from 0)")
    return ki, ni


def shard_of(target: Target, n: int) -> int:
    """A stable shard number (sha256, not Python's salted hash()): the same on every host and run."""
    digest = hashlib.sha256(str(target).encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def select_targets(texts: Iterable[str], files: Iterable[Path], shard: tuple[int, int] | None) -> list[Target]:
    """Merge and de-duplicate targets (order kept), then keep this shard's."""
    seen: dict[Target, None] = {}
    for text in texts:
        seen.setdefault(Target.parse(text), None)
    for path in files:
        for t in parse_targets_file(path):
            seen.setdefault(t, None)
    targets = list(seen)
    if shard is not None:
        k, n = shard
        targets = [t for t in targets if shard_of(t, n) == k]
    return targets
