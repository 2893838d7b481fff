"""Reading an operator's file: UTF-8 text (a BOM allowed) and CSV rows with their line numbers.

Every failure is a ConfigError (exit 2) naming the file, and the line where there is one; a CSV error
says only where, never the text (it may be a token).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from syncer.errors import ConfigError


def read_text(path: Path, what: str) -> str:
    """The file's text; ``what`` names the kind of file in errors ("tokens file", "user map")."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None


def csv_rows(text: str, where: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every CSV record; a record's number is the line it ends on."""
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        return [(reader.line_num, row) for row in reader]
    except csv.Error:
        raise ConfigError(f"{where}:{reader.line_num}: not valid CSV") from None
