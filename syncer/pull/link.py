"""A file's view link shared by the connections that fetch it (a segmented download): when it expires,
one refresh (``file_info``) serves every piece, and a file gets at most ``LINK_REFRESHES`` of them."""

from __future__ import annotations

import asyncio
from typing import Any

from syncer.api.client import LINK_REFRESHES
from syncer.errors import LinkExpiredError, ProtocolError


class SharedLink:
    """The file's view link, shared by its pieces: one refresh at a time serves them all."""

    def __init__(self, client: Any, file_id: str, fullpath: str | None) -> None:
        self._client, self._file_id = client, file_id
        self.url: str | None = fullpath
        self.gen = 0
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None

    async def get(self) -> tuple[str, int]:
        if self.url is None:
            await self.renew(self.gen)
        assert self.url is not None
        return self.url, self.gen

    async def renew(self, seen: int) -> None:
        """The link of generation ``seen`` expired: get a fresh one, unless another piece already did."""
        if seen != self.gen:
            return
        if self._task is None:
            if self.refreshes >= LINK_REFRESHES:
                raise LinkExpiredError(f"file {self._file_id}: the view link kept expiring")
            self.refreshes += 1
            self._task = asyncio.create_task(self._fetch())
        await asyncio.shield(self._task)

    async def _fetch(self) -> None:
        try:
            info = await self._client.file_info(self._file_id)
            if not info.fullpath:
                raise ProtocolError(f"file {self._file_id}: the server gave no fullpath")
            self.url = info.fullpath
            self.gen += 1
        finally:
            self._task = None
