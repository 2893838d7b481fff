"""The floor of syncer's stack: the least an aiohttp client on uvloop pays to fetch many small files.

Not collected by pytest (no ``test_`` prefix).  ``run_bench.py`` runs it in section (a) as the peer
"aiohttp floor C=N" (and "+ write"), interleaved with the others.  It GETs the ``fullpath`` links listed
beforehand (a JSON file of ``{"target", "id", "url"}`` objects, as ``run_bench.list_links`` returns),
C at a time over one ``aiohttp.ClientSession`` with ``TCPConnector(limit=C)``, and sha256-hashes each
body (syncer hashes every byte).  Nothing else: no listing, no retries, no manifest, no fsync.  With
``--dest`` it also writes each body as syncer's small-file path would without durability: create a
hidden temp file in DEST/<type>/<id>/, write, rename to the file's id (inline on the loop, no thread hop:
the least it can cost).  Prints one JSON line: files, bytes, and startup_cpu_s: its CPU before the
first request (getrusage), so that its CPU per file can be quoted net of start-up.

    python tests/perf/aiohttp_floor.py links.json --concurrency 16 [--dest DIR]

Same interpreter and loop as syncer: uvloop where installed; ``SYNCER_EVENT_LOOP=asyncio`` measures
asyncio's loop instead, as it does for syncer.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import sys
from pathlib import Path

import aiohttp


def write_file(final: Path, body: bytes) -> None:
    """Create a hidden temp file beside ``final``, write, rename; no fsync.  Called on the loop on purpose
    (see the module's docstring): this is a floor, not a client that must survive a slow disk."""
    tmp = final.with_name(f".{final.name}.part")
    with open(tmp, "wb") as f:
        f.write(body)
    os.rename(tmp, final)


def cpu_so_far() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def fetch_all(links: list[dict], concurrency: int, dest: Path | None) -> tuple[int, int, float]:
    """Fetch every link; files, bytes, and the CPU spent before the first request (start-up: the
    interpreter, the imports, the links file, the folders, the loop)."""
    startup = cpu_so_far()
    files = nbytes = 0
    pending = iter(links)  # shared by the workers: next() never awaits, so no two take the same link
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal files, nbytes
            for ln in pending:
                async with session.get(ln["url"]) as resp:
                    resp.raise_for_status()
                    body = await resp.read()
                hashlib.sha256(body).hexdigest()
                if dest is not None:
                    ttype, tid = ln["target"].split(":", 1)
                    write_file(dest / ttype / tid / ln["id"], body)
                files += 1
                nbytes += len(body)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return files, nbytes, startup


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("links", help="JSON file: a list of {target, id, url}")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--dest", help="also write each body into this (new, empty) folder")
    a = p.parse_args()
    links = json.loads(Path(a.links).read_text(encoding="utf-8"))
    dest = Path(a.dest) if a.dest else None
    if dest is not None:  # each target's folder once, before the fetches (a per-target cost, not a per-file one)
        for ttype, tid in {tuple(ln["target"].split(":", 1)) for ln in links}:
            (dest / ttype / tid).mkdir(parents=True, exist_ok=True)
    coro = fetch_all(links, a.concurrency, dest)
    if os.environ.get("SYNCER_EVENT_LOOP", "").strip().lower() == "asyncio":
        files, nbytes, startup = asyncio.run(coro)
    else:
        try:
            import uvloop
        except ImportError:
            files, nbytes, startup = asyncio.run(coro)
        else:
            files, nbytes, startup = uvloop.run(coro)
    print(json.dumps({"files": files, "bytes": nbytes, "startup_cpu_s": startup}))
    sys.exit(0 if files == len(links) else 1)


if __name__ == "__main__":
    main()
