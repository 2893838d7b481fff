"""Recipients (public keys) that backups are encrypted to: ``pull.encrypt_to`` and ``encrypt_to_file``.

The file format is age's recipients file: one recipient a line, blank lines and ``#`` comments ignored.
Accepted: X25519 (``age1...``) and SSH (``ssh-ed25519 ...``, ``ssh-rsa ...``) public keys.  A
malformed one is a ConfigError (exit 2) naming where it is and the start of the text (public keys
are not secret, but a pasted private key must never be echoed: those are refused without quoting).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from syncer.errors import ConfigError


def _describe(text: str) -> str:
    if text.upper().startswith("AGE-SECRET-KEY-") or "PRIVATE KEY" in text.upper():
        return "a private key (give the public key: the recipient)"
    return repr(text if len(text) <= 24 else text[:20] + "...")


def parse_recipient(text: str, where: str) -> Any:
    """One pyrage recipient from its text; ConfigError naming ``where`` when it is not one."""
    text = text.strip()
    if text.upper().startswith("AGE-SECRET-KEY-") or "PRIVATE KEY" in text.upper():
        raise ConfigError(f"{where}: this is a private key; encrypt_to takes recipients (public keys, age1...)")
    import pyrage

    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise ConfigError(f"{where}: malformed recipient {_describe(text)}: {exc}") from None
    raise ConfigError(f"{where}: malformed recipient {_describe(text)}: expected an age1... or ssh-ed25519/ssh-rsa"
                      " public key")


def parse_recipients_text(text: str, where: str) -> list[tuple[str, str]]:
    """``[(where:line, recipient text)]`` from recipients-file text (comments and blank lines dropped)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((f"{where}:{n}", line))
    return out


def recipient_texts(encrypt_to: Sequence[str], encrypt_to_file: Path | None) -> list[tuple[str, str]]:
    """Where each configured recipient came from and its text, checked for form only (no pyrage)."""
    found = [(f"pull.encrypt_to[{i}]", t) for i, t in enumerate(encrypt_to)]
    if encrypt_to_file is not None:
        try:
            text = Path(encrypt_to_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"pull.encrypt_to_file {encrypt_to_file} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"pull.encrypt_to_file {encrypt_to_file}: cannot read it: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        lines = parse_recipients_text(text, f"pull.encrypt_to_file {encrypt_to_file}")
        if not lines:
            raise ConfigError(f"pull.encrypt_to_file {encrypt_to_file} holds no recipient")
        found += lines
    return found


def load_recipients(encrypt_to: Sequence[str], encrypt_to_file: Path | None) -> list[Any]:
    """The pyrage recipients configured (empty: encryption off); ConfigError naming a bad one."""
    return [parse_recipient(text, where) for where, text in recipient_texts(encrypt_to, encrypt_to_file)]


def describe(recipients: Iterable[Any]) -> str:
    return ", ".join(str(r) for r in recipients)
