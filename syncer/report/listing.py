"""Small one-off remote operations for the CLI (``syncer ls``, ``pull --dry-run``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from syncer.api.retry import RetryPolicy
from syncer.config import Config
from syncer.models import Target
from syncer.redact import register_secret


@contextlib.asynccontextmanager
async def open_client(cfg: Config, token: str, *, limit: int = 8) -> AsyncIterator[Any]:
    from syncer.api.client import FilesClient, make_session

    base_url = cfg.api_base_url()
    register_secret(token)
    async with make_session(cfg.api, limit=limit) as session:
        yield FilesClient(session, base_url=base_url, token=token, account_code=cfg.api.account_code,
                          retry=RetryPolicy.from_config(cfg.retry))


async def list_target(cfg: Config, target: str, *, category: str | None = None,
                      include_shared: bool = False) -> list[dict[str, Any]]:
    """One target's files as plain rows, without any view link."""
    tgt = Target.parse(target)
    token = cfg.api_token()
    async with open_client(cfg, token) as client:
        listing = await client.list_files(tgt, category=category, include_shared=include_shared)
    return [{"id": f.id, "name": f.name, "size": f.size, "category": f.category, "created": f.created,
             "modified": f.modified, "ext": f.ext} for f in listing.files]
