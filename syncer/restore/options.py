"""What a restore is asked to do: ``RestoreOptions`` from the two configs and the flags.

Everything that cannot work is refused here, before a run starts (``ConfigError``, exit 2): no tokens
file, a backup without a manifest, two accounts without a user map, a visit target or category.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.config import Config
from syncer.errors import ConfigError
from syncer.inputs.tokens import load_tokens
from syncer.inputs.usermap import load_user_map
from syncer.models import Target
from syncer.restore.plan import NOT_RESTORABLE, UPLOADABLE


@dataclass(frozen=True)
class RestoreOptions:
    backup_manifest: Path                    # read only, never changed
    backup_dest: Path | str                  # where the backed-up files are (the backup's pull.dest: a folder
                                             # or s3://bucket/prefix)
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
    identities: tuple[Any, ...] = field(default=(), repr=False)  # --identity: open the backup's .age files
    backup_config: Config | None = field(default=None, repr=False, compare=False)  # its s3 settings

    def dest_for(self, source_user: str) -> str | None:
        """The destination user of a backed-up user, or None when the map leaves it out."""
        if self.user_map is None:
            return source_user
        return self.user_map.get(source_user)


def _account(cfg: Config) -> tuple[str, str]:
    return cfg.api.base_url.rstrip("/"), cfg.api.account_code


def options_from_config(cfg: Config, backup: Config, *, user_map: str | os.PathLike | None = None,
                        targets: Iterable[str] = (), categories: Iterable[str] = (),
                        mapping_out: str | os.PathLike | None = None, identity: str | os.PathLike | None = None,
                        need_key: bool = True) -> RestoreOptions:
    """RestoreOptions for restoring ``backup``'s files into ``cfg``'s account; ConfigError otherwise.
    An encrypted backup needs ``identity`` (unless ``need_key`` is False: a dry run reads no file)."""
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
    from syncer.store import is_object_dest

    in_bucket = is_object_dest(backup.pull.dest)
    if not in_bucket and not Path(backup.pull.dest).is_dir():
        raise ConfigError(f"the backup folder {backup.pull.dest}{where} does not exist")
    backup_dest = str(backup.pull.dest) if in_bucket else Path(backup.pull.dest)
    same_account = _account(cfg) == _account(backup)
    mapping = load_user_map(user_map) if user_map is not None else None
    if mapping is None and not same_account:
        raise ConfigError("the backup comes from another account (api.base_url or api.account_code differ):"
                          " give --user-map CSV (header source_user_id,dest_user_id)")
    tokens = load_tokens(cfg.push.tokens_file)
    identities = _identities(backup_manifest, backup_dest, backup, identity, need_key)
    try:
        same_file = os.path.samefile(backup_manifest, cfg.manifest.path)
    except OSError:
        same_file = False
    return RestoreOptions(
        backup_manifest=backup_manifest, backup_dest=backup_dest, tokens=tokens, user_map=mapping,
        same_account=same_account, users=tuple(dict.fromkeys(users)), categories=tuple(dict.fromkeys(categories)),
        concurrency=cfg.push.concurrency, mapping_out=Path(mapping_out) if mapping_out else None,
        link_pull=same_account and same_file, dest_account="#".join(_account(cfg)), identities=tuple(identities),
        backup_config=backup)


PROBE_FILES = 5  # encrypted files tried with the identity before the run (the smallest: cheap to open)


def _identities(manifest: Path, dest: Path | str, backup: Config, identity: str | os.PathLike | None,
                need_key: bool) -> list[Any]:
    """The identities for an encrypted backup (0600 file enforced); ConfigError when the backup holds
    encrypted files and no ``--identity`` was given, or when the key opens none of those tried (the
    wrong identity file: refused before anything is sent, like ``verify --decrypt``)."""
    from syncer.crypto.policy import encrypted_files

    n = encrypted_files(manifest)
    if identity is None:
        if n and need_key:
            raise ConfigError(f"the backup holds {n} encrypted files (.age): give --identity FILE, an age identity"
                              " (mode 0600) that opens them")
        return []
    from syncer.crypto.identity import load_identities

    identities = load_identities(identity)
    if n and need_key:
        from syncer.crypto.stream import probe_identities
        from syncer.manifest import Manifest

        m = Manifest.open(manifest, create=False, readonly=True)
        try:
            paths = [r[0] for r in m.conn.execute(
                "SELECT local_path FROM pull_items WHERE encrypted = 1 AND sha256 IS NOT NULL"
                " AND state IN ('done', 'remote_deleted') ORDER BY size LIMIT ?", (PROBE_FILES,))]
        finally:
            m.close()
        from syncer.restore.reader import open_reader

        reader = open_reader(dest, identities, backup)
        tried, opened = probe_identities([lambda rel=rel: reader.source(rel) for rel in paths], identities)
        if tried and not opened:
            raise ConfigError(f"--identity {identity}: none of the {tried} encrypted files tried opens with this key"
                              " (the wrong identity file?); nothing was sent")
    return identities
