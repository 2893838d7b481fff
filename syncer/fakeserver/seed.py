"""Data helpers for the built-in fake server (`syncer.fakeserver`).

Everything here is deterministic given a seed, so that two servers built with the same arguments hold
the same ids, names and bytes, and a failing test can be replayed.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import random
import struct
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

CATEGORIES = ("intake_attachment", "user_consent", "user_avatar", "user_document")
IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "gif"})

# Names that break naive clients: path traversal, separators of every OS, names Windows reserves,
# over-long names (in characters and in UTF-8 bytes), NFC vs NFD twins, control characters, names
# that are empty or only dots, duplicates and case twins within one target. Pairs that must share a
# target are adjacent and are always seeded together.
LONG_NAME_250 = "é" * 246 + ".pdf"  # 250 characters, 496 bytes in UTF-8
LONG_NAME_BYTES = "é" * 130 + ".pdf"  # 134 characters, but 264 bytes: over the usual 255-byte limit
CAFE_NFC = "caf\u00e9.pdf"
CAFE_NFD = "cafe\u0301.pdf"
HOSTILE_NAMES: tuple[str, ...] = (
    "../../etc/passwd",
    "a/b\\c:d.pdf",
    "CON.txt",
    "nul",
    "AUX",
    "com1.log",
    LONG_NAME_250,
    LONG_NAME_BYTES,
    CAFE_NFC,
    CAFE_NFD,
    "line1\nline2.txt",
    "ctrl\x01\x07\x1b[31m\t.txt",
    "nul\x00byte.txt",
    "..",
    ".",
    "",
    "report.pdf",
    "report.pdf",
    "Report.PDF",
    "trailing dot and space. ",
    " leading space.txt",
    ".hidden",
    "-rf.txt",
    "\u202egnp.exe",  # right-to-left override: shows as "exe.png"
    "emoji \U0001f4c4.pdf",
    "x" * 300 + ".txt",
)
# Hostile names that stand alone (no twin needed); one of them is sprinkled into every other target.
_SPRINKLE = tuple(n for n in HOSTILE_NAMES if n not in (CAFE_NFC, CAFE_NFD, "report.pdf", "Report.PDF"))

_PLAIN_EXTS = ("pdf", "pdf", "pdf", "jpg", "png", "docx", "txt")
_EPOCH = 1_500_000_000  # seeded files are "created" after this, spread over a few years
_CHUNK = 1 << 20


def new_uuid(rng: random.Random) -> str:
    """A UUID4-shaped file id drawn from `rng`."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def numeric_id(rng: random.Random, digits: int) -> str:
    """A numeric string id without a leading zero, like the vendor's user ids ("2317820300")."""
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def hex_token(rng: random.Random, nbytes: int = 16) -> str:
    return rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def ext_of(name: str) -> str:
    """The text after the last dot, lowercased; "" when there is none or it holds a path separator."""
    _, dot, ext = name.rpartition(".")
    if not dot or not ext or "/" in ext or "\\" in ext:
        return ""
    return ext.lower()


def created_time(rng: random.Random) -> int:
    return _EPOCH + rng.randrange(0, 4 * 365 * 86400)


def plain_name(created: int, n: int, ext: str, kind: str = "document") -> str:
    """A name in the vendor's style: "2017-01-21 04:00:00 - document-3.pdf" (the colon is real)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created))
    return f"{stamp} - {kind}-{n}.{ext}"


def plain_ext(rng: random.Random) -> str:
    return rng.choice(_PLAIN_EXTS)


def pick_size(rng: random.Random, sizes: tuple[int, ...] | None, index: int) -> int:
    """`sizes` cycled by file index if given, else a mix: empty, tiny, a few KB, up to ~200 KB."""
    if sizes:
        return sizes[index % len(sizes)]
    roll = rng.random()
    if roll < 0.08:
        return 0
    if roll < 0.35:
        return rng.randrange(100, 1000)
    if roll < 0.75:
        return rng.randrange(1000, 10_000)
    return rng.randrange(10_000, 200_000)


def sprinkle_name(index: int) -> str:
    return _SPRINKLE[index % len(_SPRINKLE)]


def content_seed_for(file_id: str) -> int:
    """Seed for a file added with `size=` but no seed of its own: derived from its id."""
    return int.from_bytes(hashlib.sha256(file_id.encode()).digest()[:8], "big")


def iter_content(seed: int, size: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in chunks of at most 1 MiB, never all in memory.

    Beyond the first MiB, chunks are rotations of one random MiB stamped with their index: about
    memcpy speed, so GB-sized files are quick to make, and no two chunks of a file are equal.
    """
    rng = random.Random(seed)
    if size <= _CHUNK:
        yield rng.randbytes(size)
        return
    base = rng.randbytes(_CHUNK)
    done = 0
    index = 0
    while done < size:
        n = min(_CHUNK, size - done)
        off = rng.randrange(_CHUNK)
        chunk = struct.pack(">Q", index) + base[off:] + base[:off]
        yield chunk[:n]
        done += n
        index += 1


def write_file(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write `chunks` to `path` (mode 0600). Returns (size, sha256 hex)."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        for chunk in chunks:
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return size, h.hexdigest()


@lru_cache(maxsize=64)
def make_png(width: int, height: int) -> bytes:
    """A valid grey PNG of width x height (clamped to 1..512): what a resized image answers."""
    width = max(1, min(width, 512))
    height = max(1, min(height, 512))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = (b"\x00" + b"\x80" * width) * height  # filter byte + 8-bit grey pixels per row
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@lru_cache(maxsize=256)
def content_type(ext: str) -> str:
    return mimetypes.types_map.get("." + ext, "application/octet-stream") if ext else "application/octet-stream"


def content_disposition(name: str) -> str:
    """`attachment` with the raw name in `filename*` (RFC 6266/5987) and an ASCII stand-in.

    The raw name can hold newlines and NUL, which a header cannot: percent-encoding carries it whole.
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
