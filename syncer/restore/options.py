"""What a restore is asked to do: ``RestoreOptions`` from the two configs and the flags.

Everything that cannot work is refused here, before a run starts (``ConfigError``, exit 2): no tokens
file, a backup without a manifest, two accounts without a user map, a visit target or category.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from syncer.config import Config
from syncer.errors import ConfigError
from syncer.inputs.tokens import load_tokens
from syncer.inputs.usermap import load_user_map
from syncer.models import Target
from syncer.restore.plan import NOT_RESTORABLE, UPLOADABLE


@dataclass(frozen=True)
class RestoreOptions:
    backup_manifest: Path                    # read only, never changed
    backup_dest: Path                        # where the backed-up files are (the backup's pull.dest)
    tokens: dict[str, str] = field(repr=False)   # destination user id -> token: secrets, never printed
    user_map: dict[str, str] | None = None   # source user -> destination user; None: each to itself
    same_account: bool = True                # the backup's account is the destination account
    users: tuple[str, ...] = ()              # source users asked for (--target user:ID); empty: all
    categories: tuple[str, ...] = ()         # empty: every category an upload can carry
    concurrency: int = 8
    mapping_out: Path | None = None
    link_pull: bool = False                  # same account, same manifest: the next pull relinks
    dest_account: str = ""                   # base_url#account_code of the destination (no secret)
    notes: list[str] = field(default_factory=list, compare=False)  # filled by the job: what was left out, why

    def dest_for(self, source_user: str) -> str | None:
        """The destination user of a backed-up user, or None when the map leaves it out."""
        if self.user_map is None:
            return source_user
        return self.user_map.get(source_user)


def _account(cfg: Config) -> tuple[str, str]:
    return cfg.api.base_url.rstrip("/"), cfg.api.account_code


def options_from_config(cfg: Config, backup: Config, *, user_map: str | os.PathLike | None = None,
                        targets: Iterable[str] = (), categories: Iterable[str] = (),
                        mapping_out: str | os.PathLike | None = None) -> RestoreOptions:
    """RestoreOptions for restoring ``backup``'s files into ``cfg``'s account; ConfigError otherwise."""
    if cfg.push.tokens_file is None:
        raise ConfigError("no tokens file: give --tokens-file PATH or push.tokens_file in the config "
                          "(CSV with the header user_id,token, mode 0600)")
    users: list[str] = []
    for text in targets:
        target = Target.parse(text)
        if target.type != "user":
            raise ConfigError(f"--target {text}: files of visit targets are {NOT_RESTORABLE}")
        users.append(target.id)
    for cat in categories:
        if cat not in UPLOADABLE:
            raise ConfigError(f"--category {cat}: files of that category are {NOT_RESTORABLE}"
                              f" (restorable: {', '.join(UPLOADABLE)})")
    backup_manifest = Path(backup.manifest.path)
    where = f" (the backup config {backup.source_path})" if backup.source_path else ""
    if not backup_manifest.is_file():
        raise ConfigError(f"the backup's manifest {backup_manifest}{where} does not exist: nothing to restore from")
    if not Path(backup.pull.dest).is_dir():
        raise ConfigError(f"the backup folder {backup.pull.dest}{where} does not exist")
    same_account = _account(cfg) == _account(backup)
    mapping = load_user_map(user_map) if user_map is not None else None
    if mapping is None and not same_account:
        raise ConfigError("the backup comes from another account (api.base_url or api.account_code differ):"
                          " give --user-map CSV (header source_user_id,dest_user_id)")
    tokens = load_tokens(cfg.push.tokens_file)
    try:
        same_file = os.path.samefile(backup_manifest, cfg.manifest.path)
    except OSError:
        same_file = False
    return RestoreOptions(
        backup_manifest=backup_manifest, backup_dest=Path(backup.pull.dest), tokens=tokens, user_map=mapping,
        same_account=same_account, users=tuple(dict.fromkeys(users)), categories=tuple(dict.fromkeys(categories)),
        concurrency=cfg.push.concurrency, mapping_out=Path(mapping_out) if mapping_out else None,
        link_pull=same_account and same_file, dest_account="#".join(_account(cfg)))
