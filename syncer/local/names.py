"""Safe local names for hostile remote names: one path component, NFC, at most 255 bytes, never hidden,
never a reserved device name; and the collision rule for two names that land in one folder.

Pure functions, no I/O.  ``syncer.local.storage`` re-exports them.
"""

from __future__ import annotations

import hashlib
import unicodedata

MAX_NAME_BYTES = 255
MAX_EXT_BYTES = 32

_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)
# Separators, NUL, C0/C1 controls, DEL, what Windows forbids, line/paragraph separators, bidi
# controls (they can disguise an extension: "evil\u202egpj.exe"), and lone surrogates (fsdecode).
_BAD_CHARS = (
    set(range(0x00, 0x20))
    | set(range(0x7F, 0xA0))
    | {ord(c) for c in '/\\<>:"|?*'}
    | {0x2028, 0x2029, 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    | set(range(0xD800, 0xE000))
)
_REPLACE = dict.fromkeys(_BAD_CHARS, "_")


def _clean(text: str) -> str:
    """Replace bad characters, NFC, strip ends; a name that began with dots gets a ``_`` marker."""
    text = unicodedata.normalize("NFC", text.translate(_REPLACE))
    core = text.strip(" .")
    if core and "." in text[: len(text) - len(text.lstrip(" ."))]:
        core = "_" + core  # ".bashrc" -> "_bashrc": never hidden, and unlike "bashrc"
    return core


def _cut(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` of UTF-8, cut on a character boundary."""
    raw = text.encode("utf-8")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", "ignore")


def _split_ext(name: str) -> tuple[str, str]:
    """``("stem", ".ext")``; a suffix counts as an extension only if short and free of spaces."""
    i = name.rfind(".")
    if i > 0:
        ext = name[i:]
        if 1 < len(ext.encode("utf-8")) <= MAX_EXT_BYTES + 1 and " " not in ext:
            return name[:i], ext
    return name, ""


def _fit(name: str, limit: int = MAX_NAME_BYTES, infix: str = "") -> str:
    """Insert ``infix`` before the extension and cut the stem so the whole fits ``limit`` bytes."""
    stem, ext = _split_ext(name)
    room = limit - len(infix.encode("utf-8")) - len(ext.encode("utf-8"))
    cut = _cut(stem, room)
    if cut != stem:
        # A prefix of an NFC string can end in a different canonical form only in corner cases;
        # normalising again keeps the result NFC, and a stem can only shrink by it.
        cut = unicodedata.normalize("NFC", cut).rstrip(" .")
    return cut + infix + ext


def _is_reserved(name: str) -> bool:
    # Windows applies the device names to the part before the first dot, trailing spaces ignored.
    return name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED


def _id_hash(file_id: str) -> str:
    return hashlib.sha256(file_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def safe_name(name: str, *, file_id: str = "", ext: str = "", reserve: int = 0) -> str:
    """One safe path component for any remote name; deterministic.

    NFC; separators, NUL, controls, ``<>:"|?*``, bidi controls and lone surrogates become ``_``;
    leading and trailing spaces and dots are stripped, and a name that began with a dot gets a
    ``_`` prefix instead (``.env`` -> ``_env``), so no result is hidden.  Windows device names
    (``CON``, ``nul.tar.gz``, ``COM1``...) get a ``_`` prefix.  An empty result becomes ``unnamed``,
    or ``unnamed-<up to 8 alphanumerics of file_id>``.  At most 255 bytes of UTF-8: the stem is cut
    on a character boundary and an extension (a suffix of at most 32 bytes without spaces) is kept.

    ``ext`` (the server's ``ext`` field) is appended as ``.ext`` unless the name already ends with
    it, case-insensitively: the server keeps ``ext`` through renames, so it is the better witness
    of the type (``scan`` + ``pdf`` -> ``scan.pdf``; ``notes.txt`` + ``pdf`` -> ``notes.txt.pdf``).

    ``reserve``: bytes of the 255 kept free for a suffix the caller appends (``.age``: 4).
    """
    base = _clean(name)
    if not base:
        label = "".join(c for c in file_id if c.isascii() and c.isalnum())[:8]
        base = f"unnamed-{label or _id_hash(file_id)}" if file_id else "unnamed"
    tail = _cut(_clean(ext.lstrip(" .")), MAX_EXT_BYTES).rstrip(" .")
    if tail and " " not in tail and not base.casefold().endswith("." + tail.casefold()):
        base = f"{base}.{tail}"
    if _is_reserved(base):
        base = "_" + base
    return _fit(base, MAX_NAME_BYTES - reserve)


def disambiguate(safe: str, file_id: str, reserve: int = 0) -> str:
    """``safe`` with ``~<8 hex of sha256(file_id)>`` before its extension, still a safe name
    (``reserve`` bytes short of 255, as in :func:`safe_name`)."""
    return _fit(safe_name(safe, reserve=reserve), MAX_NAME_BYTES - reserve, infix="~" + _id_hash(file_id))


def casefold_key(name: str) -> str:
    """The key under which two names collide on a case-insensitive file system.

    Full Unicode case folding: it finds more collisions than NTFS or APFS would (``ß`` vs ``ss``),
    never fewer; a false collision costs only a suffix.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).casefold())
