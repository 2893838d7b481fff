"""What a pull is asked to do: ``PullOptions`` (from the config and the flags) and the destination check."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncer.config import Config
from syncer.errors import ConfigError
from syncer.inputs.targets import parse_shard, select_targets
from syncer.models import Target
from syncer.store import is_object_dest


@dataclass(frozen=True)
class PullOptions:
    targets: tuple[Target, ...]
    dest: Path | str            # a folder, or "s3://bucket/prefix" (syncer.store)
    categories: tuple[str, ...] = ()
    include_shared: bool = False
    concurrency: int = 32
    dry_run: bool = False
    segment_threshold: int = 64 * 2**20   # see syncer.pull.segments
    segments: int = 8
    recipients: tuple[Any, ...] = ()  # pyrage recipients: files fetched are stored as age files
    reencrypt: bool = False           # also convert plain finished files (from the local copy)
    allow_plain: bool = False         # store plain although the manifest records encrypted files

    @property
    def encrypt(self) -> bool:
        return bool(self.recipients)

    @classmethod
    def from_config(cls, cfg: Config, *, targets: Iterable[str] = (), targets_file: str | None = None,
                    shard: str | None = None, dry_run: bool = False, reencrypt: bool = False,
                    allow_plain: bool = False) -> PullOptions:
        """The run's options: ``--target``/``--targets-file`` replace the config's targets; ``--shard K/N``
        keeps this shard's share.  ConfigError (exit 2) for what cannot work, before anything is written
        (a malformed recipient, encryption turned off over encrypted files: see syncer.crypto.policy)."""
        shard_kn = parse_shard(shard)
        if targets or targets_file:
            texts, files = list(targets), [Path(targets_file)] if targets_file else []
        else:
            texts = list(cfg.pull.targets)
            files = [cfg.pull.targets_file] if cfg.pull.targets_file else []
        chosen = select_targets(texts, files, shard_kn)
        if not chosen and shard_kn is None:
            raise ConfigError("no targets: give --target TYPE:ID, --targets-file, or pull.targets in the config")
        dest = cfg.pull.dest if is_object_dest(cfg.pull.dest) else Path(cfg.pull.dest)
        from syncer.crypto.policy import pull_recipients

        recipients = pull_recipients(cfg, reencrypt=reencrypt, allow_plain=allow_plain)
        return cls(targets=tuple(chosen), dest=dest, categories=cfg.pull.categories,
                   include_shared=cfg.pull.include_shared, concurrency=cfg.pull.concurrency, dry_run=dry_run,
                   recipients=tuple(recipients), reencrypt=reencrypt, allow_plain=allow_plain,
                   segment_threshold=cfg.pull.segment_threshold, segments=cfg.pull.segments)


def check_dest(dest: Path | str) -> None:
    """Before anything is written: ConfigError (exit 2) naming the problem when the destination cannot
    be a writable folder (it is a file, lies below a file, or sits on a read-only or forbidden place).
    Writes nothing; the run itself still reports a disk that fails later (exit 3).  A bucket is checked
    by its sink, before the manifest is opened (``syncer.store.snapshot``)."""
    if is_object_dest(dest):
        return
    dest = Path(os.path.abspath(dest))
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"pull.dest {dest} is not a folder (it is a file)")
    existing = dest
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"pull.dest {dest} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        try:  # access() refuses a read-only file system even to root: say which it is
            read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "Read-only file system" if read_only else "Permission denied"
        raise ConfigError(f"pull.dest {dest} is not writable: {existing}: {why}")
