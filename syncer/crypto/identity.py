"""Identities (private keys): read only from ``--identity FILE`` (mode 0600 enforced, like the tokens
file), never from the command line or the config file; and ``keygen``, which writes a new one.

The file format is age-keygen's: ``# created: ...`` and ``# public key: age1...`` comments, then one
``AGE-SECRET-KEY-1...`` line (several identities may follow one another).  No message raised here
ever quotes a line of the file.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

from syncer.errors import ConfigError
from syncer.local.storage import LoosePermissionsError, check_private_file


def load_identities(path: str | os.PathLike) -> list[Any]:
    """The identities in ``path``; ConfigError (exit 2) when it is missing, loose, or holds none."""
    path = Path(path)
    try:
        check_private_file(path)
    except LoosePermissionsError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"identity file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"identity file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"identity file {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    import pyrage

    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ConfigError(f"identity file {path}:{n}: not an age identity (AGE-SECRET-KEY-1...)") from None
    if not out:
        raise ConfigError(f"identity file {path} holds no identity")
    return out


def keygen(path: str | os.PathLike | None) -> tuple[str, str]:
    """A new X25519 identity in age-keygen's format: ``(file text, recipient)``; written to ``path``
    (0600, created exclusively: an existing file is never overwritten) unless ``path`` is None."""
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    public = str(ident.to_public())
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {public}\n{ident}\n"
    if path is not None:
        path = Path(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} already exists: syncer keygen never overwrites a key") from None
        except OSError as exc:
            raise ConfigError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            os.fchmod(fd, 0o600)
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return text, public
