"""The fake server's data: users, visits and stored files, with no HTTP (part of `syncer.fakeserver`).

`StoreMixin` holds the seeding and the server-side inspection and changes that tests call directly
(`add_file`, `share_file`, `rename_file`, ...). `FakeServer` inherits it; the attributes it works on
(`_rng`, `_files`, `_by_target`, `data_dir`, `clock`, ...) are set in `FakeServer.__init__`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.fakeserver import seed as seedlib

CACHE_FILE_MAX = 256 * 1024  # files up to this size are also kept in memory: views skip the disk
_CACHE_TOTAL_MAX = 256 * 2**20


@dataclass(slots=True)
class FileRec:
    """One stored file. `path` holds its bytes; `cached` too when small."""

    id: str
    name: str
    size: int
    ext: str
    category: str
    target_type: str
    target_id: str
    meta_target: dict[str, str]
    owner: str
    created: int
    modified: int
    deletable: bool
    path: Path
    sha256: str
    shared_with: set[str] = field(default_factory=set)
    cached: bytes | None = None
    disposition: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "size": self.size, "ext": self.ext,
            "category": self.category, "target_type": self.target_type, "target_id": self.target_id,
            "meta_target": dict(self.meta_target), "owner": self.owner, "created": self.created,
            "modified": self.modified, "deletable": self.deletable, "path": str(self.path),
            "sha256": self.sha256, "shared_with": set(self.shared_with),
        }  # fmt: skip


class StoreMixin:
    """Users, visits and files of a `FakeServer`: seeding, adding, inspecting, changing, forgetting."""

    # ---- seeding -------------------------------------------------------------------------------

    def _seed(
        self, users: int, per_user: int, visits: int, per_visit: int, hostile: bool, sizes: tuple[int, ...] | None
    ) -> None:
        rng = self._rng
        for _ in range(users):
            self.add_user()
        for _ in range(visits):
            self.add_visit()
        index = 0  # over all seeded files, so `sizes` cycles across them
        targets = [("user", u) for u in self.users] + [("visit", v) for v in self.visits]
        for t_index, (ttype, tid) in enumerate(targets):
            count = per_user if ttype == "user" else per_visit
            for j in range(count):
                created = seedlib.created_time(rng)
                if ttype == "visit":
                    category, kind, ext = "intake_attachment", "attachment", seedlib.plain_ext(rng)
                elif j == 0 and t_index % 2 == 0:
                    category, kind, ext = "user_avatar", "avatar", "png"
                elif j % 5 == 4:
                    category, kind, ext = "user_consent", "consent", "pdf"
                else:
                    category, kind, ext = "user_document", "document", seedlib.plain_ext(rng)
                name = seedlib.plain_name(created, j + 1, ext, kind)
                if hostile and t_index > 0 and j == count - 1:
                    name = seedlib.sprinkle_name(t_index - 1)
                deletable = category in ("user_document", "user_avatar")
                size = seedlib.pick_size(rng, sizes, index)
                index += 1
                self._add(ttype, tid, name, None, size, category, created, None, deletable, rng.getrandbits(64))
            if hostile and t_index == 0:
                # Every hostile name in one target, so the NFC/NFD twins and duplicates share it.
                for name in seedlib.HOSTILE_NAMES:
                    category = "user_document" if ttype == "user" else "intake_attachment"
                    size = seedlib.pick_size(rng, sizes, index)
                    index += 1
                    created = seedlib.created_time(rng)
                    self._add(ttype, tid, name, None, size, category, created, None, True, rng.getrandbits(64))
        if len(self.users) >= 2:
            for i in range(0, len(self.users), 3):
                owner, other = self.users[i], self.users[(i + 1) % len(self.users)]
                for fid in self._by_target.get(("user", owner), []):
                    if self._files[fid].category == "user_document":
                        self.share_file(fid, other)
                        break

    def add_user(self, user_id: str | None = None) -> str:
        """Register a user (a 10-digit id unless given) with its own token; returns the id."""
        if user_id is None:
            user_id = seedlib.numeric_id(self._rng, 10)
            while user_id in self.user_tokens:
                user_id = seedlib.numeric_id(self._rng, 10)
        if user_id in self.user_tokens:
            return user_id
        token = seedlib.hex_token(self._rng)
        self.users.append(user_id)
        self.user_tokens[user_id] = token
        self._token_users[token] = user_id
        n = len(self.users)
        self._people[user_id] = {
            "id": user_id, "username": f"patient{user_id}", "email": f"patient{n}@clinic.example",
            "full_name": f"Patient {n}", "type": 200,
        }  # fmt: skip
        return user_id

    def add_visit(self, visit_id: str | None = None) -> str:
        """Register a visit (a numeric id unless given) with its intake; returns the id."""
        if visit_id is None:
            visit_id = seedlib.numeric_id(self._rng, 8)
            while visit_id in self._intake_of:
                visit_id = seedlib.numeric_id(self._rng, 8)
        if visit_id not in self._intake_of:
            self.visits.append(visit_id)
            self._intake_of[visit_id] = seedlib.new_uuid(self._rng)
        return visit_id

    def add_file(
        self,
        target_type: str,
        target_id: str,
        name: str,
        data: bytes | None = None,
        *,
        size: int | None = None,
        category: str | None = None,
        created: int | None = None,
        owner: str | None = None,
        deletable: bool = True,
        file_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a file and return its record. `data=` writes those bytes; `size=` writes that many
        deterministic pseudo-random bytes, in chunks (GB sizes work). Unknown targets are registered.
        `file_id=` gives the file that id instead of a new UUID: any string, even one no real server
        would send (control characters, bidi overrides), to test what a client does with it."""
        if data is not None and size is not None and size != len(data):
            raise ValueError("give data= or size=, not both")
        if data is None and size is None:
            data = b""
        if file_id is not None and (not file_id or file_id in self._files):
            raise ValueError(f"file id {file_id!r} is empty or taken")
        return self._add(target_type, target_id, name, data, size, category, created, owner, deletable, None,
                         file_id).as_dict()

    def _add(
        self,
        target_type: str,
        target_id: str,
        name: str,
        data: bytes | None,
        size: int | None,
        category: str | None,
        created: int | None,
        owner: str | None,
        deletable: bool,
        content_seed: int | None,
        file_id: str | None = None,
    ) -> FileRec:
        if target_type == "user":
            self.add_user(target_id)
            meta_target = {"id": target_id, "type": "user"}
        elif target_type == "visit":
            self.add_visit(target_id)
            meta_target = {"id": self._intake_of[target_id], "type": "intake"}
        else:
            raise ValueError(f"target_type must be 'user' or 'visit', not {target_type!r}")
        category = category or ("user_document" if target_type == "user" else "intake_attachment")
        if category not in seedlib.CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        if file_id is None:
            file_id = seedlib.new_uuid(self._rng)
            path = self.data_dir / file_id
        else:  # a given id may hold anything: the bytes go under a name derived from it
            path = self.data_dir / hashlib.sha256(file_id.encode("utf-8", "surrogatepass")).hexdigest()
        if data is None:
            seed = content_seed if content_seed is not None else seedlib.content_seed_for(file_id)
            chunks = seedlib.iter_content(seed, size or 0)
            if (size or 0) <= CACHE_FILE_MAX:
                data = b"".join(chunks)
        written, sha = seedlib.write_file(path, [bytes(data)] if data is not None else chunks)
        if created is None:
            created = int(self.clock())
        owner = owner or (target_id if target_type == "user" else self._provider)
        rec = FileRec(
            id=file_id, name=name, size=written, ext=seedlib.ext_of(name), category=category,
            target_type=target_type, target_id=target_id, meta_target=meta_target, owner=owner,
            created=created, modified=created, deletable=deletable, path=path, sha256=sha,
            disposition=seedlib.content_disposition(name),
        )  # fmt: skip
        self._remember(rec, bytes(data) if data is not None else None)
        return rec

    def _remember(self, rec: FileRec, data: bytes | None) -> None:
        if data is not None and len(data) <= CACHE_FILE_MAX and self._cache_bytes + len(data) <= _CACHE_TOTAL_MAX:
            rec.cached = data
            self._cache_bytes += len(data)
        self._files[rec.id] = rec
        self._by_target.setdefault((rec.target_type, rec.target_id), []).append(rec.id)

    # ---- server-side inspection and changes (no HTTP) ------------------------------------------

    def files(self) -> list[dict[str, Any]]:
        """Every stored record (copies)."""
        return [rec.as_dict() for rec in list(self._files.values())]

    def file_bytes(self, file_id: str) -> bytes:
        rec = self._files[file_id]
        return rec.cached if rec.cached is not None else rec.path.read_bytes()

    def file_path(self, file_id: str) -> Path:
        return self._files[file_id].path

    def token_for(self, user_id: str) -> str:
        return self.user_tokens[user_id]

    def share_file(self, file_id: str, user_id: str) -> None:
        """Share a file with a user: it then shows in that user's `include_shared` listing."""
        rec = self._files[file_id]
        if user_id not in rec.shared_with:
            rec.shared_with.add(user_id)
            self._shared_to.setdefault(user_id, []).append(file_id)

    def rename_file(self, file_id: str, new_name: str) -> None:
        """Rename as the service would: `ext` stays, `modified` moves."""
        rec = self._files[file_id]
        rec.name = new_name
        rec.disposition = seedlib.content_disposition(new_name)
        rec.modified = int(self.clock())

    def delete_file(self, file_id: str) -> None:
        self._forget(file_id).path.unlink(missing_ok=True)

    def _forget(self, file_id: str) -> FileRec:
        rec = self._files.pop(file_id)
        self._by_target[(rec.target_type, rec.target_id)].remove(file_id)
        for user in rec.shared_with:
            self._shared_to[user].remove(file_id)
        if rec.cached is not None:
            self._cache_bytes -= len(rec.cached)
        return rec
