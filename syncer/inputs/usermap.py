"""The user map of a migration: which user of the backed-up account becomes which user of the new one.

A CSV file with the header ``source_user_id,dest_user_id``, one pair a line; blank lines and lines
starting with ``#`` are ignored.  A source user may appear once and a destination user once: two
backed-up users poured into one account user, or one user split in two, is never what a migration
means, so either is refused (``ConfigError``, exit 2) naming the line, before anything is sent.
The map holds ids only (no secrets), so unlike the tokens file its mode is not checked.
"""

from __future__ import annotations

from pathlib import Path

from syncer.errors import ConfigError
from syncer.inputs.textfile import csv_rows, read_text
from syncer.inputs.tokens import valid_user_id

HEADER = ("source_user_id", "dest_user_id")


def load_user_map(path: str | Path) -> dict[str, str]:
    """``{source_user_id: dest_user_id}`` from the file; ConfigError naming the file and line."""
    path = Path(path)
    return parse_user_map(read_text(path, "user map"), str(path))


def parse_user_map(text: str, where: str = "user map") -> dict[str, str]:
    """Parse the CSV text of a user map (see :func:`load_user_map`); ``where`` names it in errors."""
    rows = csv_rows(text, where)
    mapping: dict[str, str] = {}
    dest_line: dict[str, int] = {}
    src_line: dict[str, int] = {}
    header_seen = False
    for lineno, row in rows:
        cells = [c.strip() for c in row]
        if not cells or not "".join(cells) or cells[0].startswith("#"):
            continue
        if not header_seen:
            if tuple(c.lower() for c in cells) != HEADER:
                raise ConfigError(f"{where}:{lineno}: the first line must be the header "
                                  "'source_user_id,dest_user_id'")
            header_seen = True
            continue
        if len(cells) != 2:
            raise ConfigError(f"{where}:{lineno}: expected 2 columns (source_user_id,dest_user_id), "
                              f"got {len(cells)}")
        src, dest = cells
        for label, value in (("source", src), ("destination", dest)):
            if not valid_user_id(value):
                raise ConfigError(f"{where}:{lineno}: the {label} user id {value[:40]!r} is not an id"
                                  " (letters, digits, '-' or '_')")
        if src in src_line:
            raise ConfigError(f"{where}:{lineno}: source user {src} appears twice (first on line {src_line[src]})")
        if dest in dest_line:
            raise ConfigError(f"{where}:{lineno}: destination user {dest} appears twice (first on line "
                              f"{dest_line[dest]}): two users cannot be merged into one")
        src_line[src], dest_line[dest] = lineno, lineno
        mapping[src] = dest
    if not header_seen:
        raise ConfigError(f"{where}: empty: expected the header 'source_user_id,dest_user_id' and one line a user")
    return mapping
