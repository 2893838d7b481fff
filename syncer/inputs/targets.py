"""Which targets a pull covers: flags, config, a targets file, and --shard.

An id with a character no real id has (whitespace inside it, a quote, a bracket or brace, a comma or
semicolon, a control, format or separator character) is refused (exit 2, naming the file and line or
the flag): it is a mistake in the list (``user:{'id': 123}``, a pasted CSV row), and would otherwise
only list nothing, in silence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from collections.abc import Iterable
from pathlib import Path

from syncer.errors import ConfigError
from syncer.inputs.textfile import read_text
from syncer.models import Target


def parse_targets_file(path: Path) -> list[Target]:
    """One ``TYPE:ID`` a line (``#`` comments, blank lines), or a CSV with ``target_type,target_id``."""
    text = read_text(path, "targets file")
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


# Punctuation no id of the Files API has (ids are numbers or UUID-like strings), but a mangled list does.
_NOT_IN_IDS = frozenset("'\"`{}[]()<>,;|\\=")


def bad_id_char(ident: str) -> str | None:
    """The first character of ``ident`` that no real id has, escaped for a message; None if all are fine."""
    for ch in ident:
        if ch in _NOT_IN_IDS or ch.isspace() or unicodedata.category(ch)[0] in "CZ":
            return ch.encode("unicode_escape").decode("ascii") if not ch.isprintable() or ch.isspace() else ch
    return None


def parse_target(text: str) -> Target:
    """``Target.parse`` plus the check of the id's characters (see the module docstring)."""
    target = Target.parse(text)
    bad = bad_id_char(target.id)
    if bad is not None:
        shown = text.strip().encode("unicode_escape").decode("ascii") if not text.isprintable() else text.strip()
        raise ConfigError(f"target {shown[:80]!r}: the id has a character no id has ({bad!r}); "
                          "one TYPE:ID a line, e.g. user:2317820300")
    return target


def _parse(text: str, path: Path, lineno: int) -> Target:
    try:
        return parse_target(text)
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
        seen.setdefault(parse_target(text), None)
    for path in files:
        for t in parse_targets_file(path):
            seen.setdefault(t, None)
    targets = list(seen)
    if shard is not None:
        k, n = shard
        targets = [t for t in targets if shard_of(t, n) == k]
    return targets
