"""Value objects: targets, remote files and item states, with lenient parsing of the API's JSON.

The API's types drift (ids as numbers, missing optional fields); we accept what can be understood
and name the field when something required is missing or unusable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from syncer.errors import ConfigError, ProtocolError

TARGET_TYPES = ("user", "visit")
CATEGORIES = ("intake_attachment", "user_consent", "user_avatar", "user_document")


class PullState(enum.StrEnum):
    PENDING = "pending"            # listed, not yet downloaded (or changed since)
    DONE = "done"                  # durable on disk, hash recorded
    FAILED = "failed"              # last attempt failed; retried next run
    PERMANENT = "permanent"        # will not succeed as is (404, unsafe name): not retried
    REMOTE_DELETED = "remote_deleted"  # gone from the listing; the local copy is kept


class PushState(enum.StrEnum):
    PENDING = "pending"            # found locally, not yet uploaded
    UPLOADING = "uploading"        # intent recorded: a POST may be in flight or its outcome unknown
    DONE = "done"                  # uploaded; remote_id recorded
    FAILED = "failed"              # retried next run
    PERMANENT = "permanent"        # 400/413: not retried until the file changes


@dataclass(frozen=True, order=True)
class Target:
    type: str
    id: str

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``TYPE:ID`` (``user:123``); raise ConfigError naming the problem."""
        kind, sep, ident = text.strip().partition(":")
        kind, ident = kind.strip().lower(), ident.strip()
        if not sep or not ident:
            raise ConfigError(f"target {text!r} is not TYPE:ID (for example user:2317820300)")
        if kind not in TARGET_TYPES:
            raise ConfigError(f"target {text!r}: type must be one of {', '.join(TARGET_TYPES)}")
        if any(c in ident for c in "/\\\0") or ident in (".", "..") or not ident.isprintable():
            raise ConfigError(f"target {text!r}: the id has characters an id cannot have")
        return cls(kind, ident)

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


def _as_str_id(value: Any, field_name: str, *, required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise ProtocolError(f"file object: required field {field_name!r} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProtocolError(f"file object: field {field_name!r} has the wrong type ({type(value).__name__})")
    return str(value)


def _as_int(value: Any, field_name: str, *, required: bool = False) -> int | None:
    if value is None or value == "":
        if required:
            raise ProtocolError(f"file object: required field {field_name!r} is missing")
        return None
    if isinstance(value, bool):
        raise ProtocolError(f"file object: field {field_name!r} has the wrong type (bool)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ProtocolError(f"file object: field {field_name!r} is not an integer")


@dataclass(frozen=True)
class RemoteFile:
    """One file object as the API describes it.  ``fullpath`` is short-lived: never store it."""

    id: str
    name: str
    size: int | None
    ext: str = ""
    fullpath: str | None = field(default=None, repr=False)
    category: str | None = None
    meta_target_type: str | None = None
    meta_target_id: str | None = None
    owner_id: str | None = None
    created: int | None = None
    modified: int | None = None
    is_deletable: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    KNOWN = frozenset(
        {"id", "name", "size", "ext", "fullpath", "meta", "creator", "created", "modified", "is_deletable"}
    )

    @classmethod
    def from_api(cls, obj: Any, *, require_fullpath: bool = False) -> RemoteFile:
        """Parse leniently: ids become strings, unknown fields are kept in ``extra``."""
        if not isinstance(obj, dict):
            raise ProtocolError(f"file object is a {type(obj).__name__}, not an object")
        file_id = _as_str_id(obj.get("id"), "id")
        assert file_id is not None
        name = obj.get("name")
        if name is None:
            name = ""
        if not isinstance(name, str):
            raise ProtocolError(f"file {file_id}: field 'name' is not a string")
        size = _as_int(obj.get("size"), "size")
        if size is not None and size < 0:
            raise ProtocolError(f"file {file_id}: field 'size' is negative")
        fullpath = obj.get("fullpath")
        if fullpath is not None and not isinstance(fullpath, str):
            raise ProtocolError(f"file {file_id}: field 'fullpath' is not a string")
        if require_fullpath and not fullpath:
            raise ProtocolError(f"file {file_id}: required field 'fullpath' is missing")
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        target = meta.get("target") if isinstance(meta.get("target"), dict) else {}
        creator = obj.get("creator") if isinstance(obj.get("creator"), dict) else {}
        ext = obj.get("ext")
        category = meta.get("category")
        return cls(
            id=file_id,
            name=name,
            size=size,
            ext=ext if isinstance(ext, str) else "",
            fullpath=fullpath or None,
            category=category if isinstance(category, str) and category else None,
            meta_target_type=_as_str_id(target.get("type"), "meta.target.type", required=False),
            meta_target_id=_as_str_id(target.get("id"), "meta.target.id", required=False),
            owner_id=_as_str_id(creator.get("id"), "creator.id", required=False),
            created=_as_int(obj.get("created"), "created"),
            modified=_as_int(obj.get("modified"), "modified"),
            is_deletable=obj.get("is_deletable") if isinstance(obj.get("is_deletable"), bool) else None,
            extra={k: v for k, v in obj.items() if k not in cls.KNOWN},
        )
