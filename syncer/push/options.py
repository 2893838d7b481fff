"""What a push is asked to do: ``PushOptions``, from the config and the flags."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.errors import ConfigError
from syncer.inputs.tokens import load_tokens, valid_user_id

# The manifest and the files SQLite keeps beside it: never uploaded, even when they sit under the source.
MANIFEST_SIDE_FILES = ("", "-wal", "-shm", "-journal", ".lock")


@dataclass(frozen=True)
class PushOptions:
    source: Path
    tokens: dict[str, str] = field(repr=False)   # user id -> token: secrets, never printed
    users: tuple[str, ...] = ()                  # empty: every user folder under source
    category: str = "user_document"
    concurrency: int = 8
    exclude: frozenset[str] = frozenset()        # real paths never uploaded (manifest, config, tokens file)

    @classmethod
    def from_config(cls, cfg: Any, users: Iterable[str] = ()) -> PushOptions:
        """PushOptions from a loaded Config and ``--user`` ids; ConfigError for what cannot work."""
        push = cfg.push
        if push.tokens_file is None:
            raise ConfigError("no tokens file: give --tokens-file PATH or push.tokens_file in the config "
                              "(CSV with the header user_id,token, mode 0600)")
        chosen = tuple(dict.fromkeys(u.strip() for u in users))
        for user in chosen:
            if not valid_user_id(user):
                raise ConfigError(f"--user {user!r} is not a user id (letters, digits, '-' or '_')")
        source = Path(push.source)
        if not source.is_dir():
            raise ConfigError(f"the push source {source} is not a folder (set --source or push.source)")
        tokens = load_tokens(push.tokens_file)
        manifest = Path(cfg.manifest.path)
        ours = [manifest.with_name(manifest.name + s) for s in MANIFEST_SIDE_FILES] + [push.tokens_file]
        if cfg.source_path is not None:  # a config (or tokens file) kept in the source root is not a stray file
            ours.append(cfg.source_path)
        exclude = frozenset(os.path.realpath(p) for p in ours)
        return cls(source=source, tokens=tokens, users=chosen, category=push.category,
                   concurrency=push.concurrency, exclude=exclude)
