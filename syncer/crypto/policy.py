"""What a pull does about encryption, decided before it starts: the recipients to encrypt to, and
the refusal to turn encryption off silently while the backup holds encrypted files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.crypto.recipients import load_recipients
from syncer.errors import ConfigError

if TYPE_CHECKING:
    from syncer.config import Config


def pull_recipients(cfg: Config, *, reencrypt: bool = False, allow_plain: bool = False) -> list[Any]:
    """The pyrage recipients for this pull (empty: store plain); ConfigError (exit 2) naming a malformed
    recipient, ``--reencrypt`` without recipients, or encryption turned off while the manifest
    records encrypted files and ``--allow-plain`` was not given."""
    recipients = load_recipients(cfg.pull.encrypt_to, cfg.pull.encrypt_to_file)
    if recipients:
        return recipients
    if reencrypt:
        raise ConfigError("--reencrypt needs encryption on: set pull.encrypt_to or pull.encrypt_to_file")
    if not allow_plain:
        refuse_plain(encrypted_files(Path(cfg.manifest.path)))
    return recipients


def refuse_plain(encrypted: int) -> None:
    """ConfigError when the backup holds ``encrypted`` files and a pull without recipients would store
    new ones in the clear.  Checked before the run, and again once the run has its manifest (a fresh
    pod fetches it from the bucket's snapshot only then)."""
    if encrypted:
        raise ConfigError(
            f"the backup holds {encrypted} encrypted files but no recipient is configured (pull.encrypt_to): "
            "new files would be stored in the clear. Restore the recipients, or give --allow-plain "
            "to store new and changed files unencrypted")


def encrypted_files(manifest_path: Path) -> int:
    """How many rows the manifest records as encrypted (0 when there is no manifest yet)."""
    from syncer.errors import ManifestError
    from syncer.manifest import Manifest

    try:
        if not manifest_path.is_file() or manifest_path.stat().st_size == 0:
            return 0
        manifest = Manifest.open(manifest_path, create=False, readonly=True)
    except (OSError, ManifestError):
        return 0  # nothing readable to protect here; the run itself opens (or refuses) the manifest
    try:
        return manifest.pull_encrypted_rows()
    finally:
        manifest.close()
