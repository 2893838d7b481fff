"""The tokens file: which token uploads for which user.

A CSV file with the header ``user_id,token``, one user a line; blank lines and lines starting with ``#``
are ignored.  It holds secrets, so it must be private (mode 0600, like an ssh key): a file that group or
others can read is refused before it is read.  No message raised here ever carries a token value, and
every token is registered with :func:`syncer.redact.register_secret`, so log lines mask it.
"""

from __future__ import annotations

import re
from pathlib import Path

from syncer.errors import ConfigError
from syncer.inputs.textfile import csv_rows, read_text
from syncer.local.storage import LoosePermissionsError, check_private_file
from syncer.redact import register_secret

HEADER = ("user_id", "token")
# User ids are folder names under the push source and go into URLs: ASCII letters, digits, '-', '_'.
USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def valid_user_id(text: str) -> bool:
    return USER_ID_RE.fullmatch(text) is not None


def load_tokens(path: str | Path) -> dict[str, str]:
    """``{user_id: token}`` from the tokens file; ConfigError (exit 2) naming the file and line when it
    is missing, loose (readable or writable by group or others), or malformed."""
    path = Path(path)
    try:
        check_private_file(path)
    except LoosePermissionsError:
        raise  # a ConfigError (exit 2) that names the file and says: chmod 600
    except FileNotFoundError:
        raise ConfigError(f"tokens file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"tokens file {path}: cannot read it: {exc.strerror or exc}") from None
    return parse_tokens(read_text(path, "tokens file"), str(path))


def parse_tokens(text: str, where: str = "tokens file") -> dict[str, str]:
    """Parse the CSV text of a tokens file (see :func:`load_tokens`); ``where`` names it in errors."""
    tokens: dict[str, str] = {}
    header_seen = False
    rows = csv_rows(text, where)
    for lineno, row in rows:
        cells = [c.strip() for c in row]
        if not cells or not "".join(cells) or cells[0].startswith("#"):
            continue
        if not header_seen:
            if tuple(c.lower() for c in cells) != HEADER:
                raise ConfigError(f"{where}:{lineno}: the first line must be the header 'user_id,token'")
            header_seen = True
            continue
        # Register before any check: whatever goes wrong below, a value that may be a token is masked.
        for cell in cells[1:]:
            register_secret(cell)
        if len(cells) != 2:
            raise ConfigError(f"{where}:{lineno}: expected 2 columns (user_id,token), got {len(cells)}")
        user_id, token = cells
        if not valid_user_id(user_id):
            raise ConfigError(f"{where}:{lineno}: the user id is not an id (letters, digits, '-' or '_')")
        if not token:
            raise ConfigError(f"{where}:{lineno}: user {user_id} has an empty token")
        if any(c.isspace() for c in token) or not token.isprintable():
            raise ConfigError(f"{where}:{lineno}: the token of user {user_id} contains spaces or control characters")
        if user_id in tokens:
            raise ConfigError(f"{where}:{lineno}: user {user_id} appears twice")
        tokens[user_id] = token
    if not header_seen:
        raise ConfigError(f"{where}: empty: expected the header 'user_id,token' and one line per user")
    return tokens
