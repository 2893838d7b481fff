"""``syncer demo``: the whole product against the built-in server, with no config, token or network.

It starts :class:`~syncer.fakeserver.FakeServer` in-process with seeded patients and visits (varied
sizes, a few hostile names), pulls everything into ``<workdir>/backup``, checks the copy byte for
byte against the server, uploads a small folder per patient with push, checks those too, deletes two
backed-up documents on the server and puts them back with restore, and leaves a ``syncer.toml`` so
that ``syncer status -c <workdir>/syncer.toml`` works afterwards.  A last act backs everything up
again with encryption at rest into ``<workdir>/encrypted`` (its own manifest and config), encrypted to
a throwaway age key made in the work folder (``demo-key.txt``), and decrypts every file to check it.
(The first backup stays plain, so its folder can be browsed as it is; restore also reads an encrypted
one, with ``--identity``.)

The work folder must be new, empty, or made by an earlier demo (which leaves the 0600 marker file
``.syncer-demo``): anything else is refused before a byte is written, since the demo writes a config,
a tokens file and a manifest of its own there and would otherwise overwrite a real setup.  A folder
an earlier demo made starts over: that demo's manifest is removed (the new server is a new account).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.config import ApiConfig, Config, ManifestConfig, PullConfig, PushConfig, RetryConfig
from syncer.errors import ConfigError
from syncer.fakeserver import FakeServer
from syncer.local.storage import make_dirs, write_private_bytes, write_private_text
from syncer.models import Target
from syncer.run.stats import RunStats

DEMO_MARKER = ".syncer-demo"
MANIFEST_NAME = "syncer-manifest.sqlite"


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` the demo's: create it (0700), or accept it when empty or marked by an earlier demo;
    then write the marker.  ConfigError, with nothing touched, for any other folder."""
    if workdir.is_symlink() or (workdir.exists() and not workdir.is_dir()):
        raise ConfigError(f"--workdir {workdir}: not a folder")
    if workdir.is_dir():
        try:
            entries = sorted(p.name for p in workdir.iterdir())
        except OSError as exc:
            raise ConfigError(f"--workdir {workdir}: cannot read it: {exc.strerror or exc}") from None
        marker = workdir / DEMO_MARKER
        if entries and not (marker.is_file() and not marker.is_symlink()):
            raise ConfigError(f"--workdir {workdir} is not empty and was not made by `syncer demo`: the demo"
                              " would overwrite its config, tokens and manifest. Give a new or empty folder.")
        for suffix in ("", "-wal", "-shm", "-journal"):  # an earlier demo's: its server is gone
            (workdir / (MANIFEST_NAME + suffix)).unlink(missing_ok=True)
    else:
        workdir.mkdir(parents=True, mode=0o700)
    write_private_text(workdir / DEMO_MARKER, "made by `syncer demo`; a demo may reuse (and overwrite) this folder\n")


@dataclass
class DemoResult:
    workdir: Path
    pull: RunStats
    pull_code: int
    pull_verified: int = 0
    pull_mismatches: list[str] = field(default_factory=list)
    push: RunStats | None = None
    push_code: int | None = None
    push_verified: int = 0
    push_mismatches: list[str] = field(default_factory=list)
    restore: RunStats | None = None
    restore_code: int | None = None
    restore_verified: int = 0
    restore_mismatches: list[str] = field(default_factory=list)
    encrypted: RunStats | None = None    # the encrypted backup (the last act)
    encrypted_code: int | None = None
    encrypted_verified: int = 0
    encrypted_mismatches: list[str] = field(default_factory=list)
    key_path: Path | None = None         # the throwaway age identity it is encrypted to
    sample_file: Path | None = None      # one encrypted file, for the decrypt command shown

    @property
    def ok(self) -> bool:
        return (self.pull_code == 0 and not self.pull_mismatches
                and self.push_code in (0, None) and not self.push_mismatches
                and self.restore_code in (0, None) and not self.restore_mismatches
                and self.encrypted_code in (0, None) and not self.encrypted_mismatches)


def demo_config(srv: FakeServer, workdir: Path) -> Config:
    return Config(
        api=ApiConfig(base_url=srv.base_url, account_code=srv.account_code),
        manifest=ManifestConfig(path=workdir / MANIFEST_NAME),
        retry=RetryConfig(attempts=6, max_wait=1.0, min_wait=0.05),
        pull=PullConfig(dest=workdir / "backup", concurrency=16),
        push=PushConfig(source=workdir / "upload", tokens_file=workdir / "tokens.csv", concurrency=8),
    )


def _write_config_file(cfg: Config, path: Path) -> None:
    """A config the operator can reuse for ``syncer status`` / ``syncer verify`` after the demo."""
    text = (
        "# Written by `syncer demo`. The built-in server is gone once the demo ends, so only the\n"
        "# commands that read the manifest and the backup (status, verify) work with this file.\n"
        f'[api]\nbase_url = "{cfg.api.base_url}"\naccount_code = "{cfg.api.account_code}"\n'
        f'[manifest]\npath = "{cfg.manifest.path.name}"\n'
        f'[pull]\ndest = "{cfg.pull.dest.name}"\n'
        + (f"encrypt_to = {json.dumps(list(cfg.pull.encrypt_to))}\n" if cfg.pull.encrypt_to else "") +
        f'[push]\nsource = "{cfg.push.source.name}"\ntokens_file = "{cfg.push.tokens_file.name}"\n'
    )
    write_private_text(path, text)


def _make_upload_tree(srv: FakeServer, cfg: Config, users: list[str]) -> dict[tuple[str, str], bytes]:
    """A few documents per patient to migrate in, and the 0600 tokens file."""
    source = cfg.push.source
    made: dict[tuple[str, str], bytes] = {}
    for n, user in enumerate(users):
        make_dirs(source / user / "scans", cfg.pull.dest.parent)
        for i, name in enumerate(("intake form.pdf", "lab results — März.txt", f"scans/xray-{n}.png")):
            data = hashlib.sha256(f"{user}/{i}".encode()).digest() * (50 + 400 * i)
            path = source / user / name
            make_dirs(path.parent, cfg.pull.dest.parent)
            write_private_bytes(path, data)
            made[(user, path.name)] = data
    assert cfg.push.tokens_file is not None
    write_private_text(cfg.push.tokens_file,
                       "user_id,token\n" + "".join(f"{user},{srv.token_for(user)}\n" for user in users))
    return made


async def run_demo(workdir: Path, *, on_progress: Any = None) -> DemoResult:
    """Run pull and push against a fresh built-in server; check both results byte for byte."""
    import asyncio

    from syncer.pull.job import PullJob
    from syncer.pull.options import PullOptions
    from syncer.run.runner import execute

    claim_workdir(workdir)  # noqa: ASYNC240 - once, before any work
    async with FakeServer(seed=42, users=4, files_per_user=6, visits=2, files_per_visit=3,
                          hostile_names=True, sizes=(0, 700, 12_000, 90_000, 400_000)) as srv:
        cfg = demo_config(srv, workdir)
        await asyncio.to_thread(_write_config_file, cfg, workdir / "syncer.toml")
        targets = tuple([Target("user", u) for u in srv.users] + [Target("visit", v) for v in srv.visits])
        opts = PullOptions(targets=targets, dest=cfg.pull.dest, concurrency=cfg.pull.concurrency)

        stats, code = await execute(PullJob, cfg, opts, token=srv.api_key, concurrency=opts.concurrency,
                                    on_progress=on_progress, details={"demo": True})
        result = DemoResult(workdir, stats, code)
        await asyncio.to_thread(_check_pull, srv, cfg, result)
        await _demo_push(srv, cfg, result, on_progress)
        await _demo_restore(srv, cfg, result, on_progress)
        await _demo_encrypted(srv, cfg, result, on_progress)
        return result


def _check_pull(srv: FakeServer, cfg: Config, result: DemoResult) -> None:
    import sqlite3

    conn = sqlite3.connect(cfg.manifest.path)
    try:
        rows = conn.execute("SELECT file_id, local_path FROM pull_items WHERE state = 'done'").fetchall()
    finally:
        conn.close()
    for file_id, local_path in rows:
        if (cfg.pull.dest / local_path).read_bytes() == srv.file_bytes(file_id):
            result.pull_verified += 1
        else:
            result.pull_mismatches.append(file_id)
    if len(rows) != len(srv.files()):
        result.pull_mismatches.append(f"{len(srv.files()) - len(rows)} files not backed up")


async def _demo_push(srv: FakeServer, cfg: Config, result: DemoResult, on_progress: Any) -> None:
    import asyncio

    from syncer.push.job import PushJob
    from syncer.push.options import PushOptions
    from syncer.run.runner import execute

    made = await asyncio.to_thread(_make_upload_tree, srv, cfg, srv.users[:3])
    opts = await asyncio.to_thread(PushOptions.from_config, cfg)

    result.push, result.push_code = await execute(
        PushJob, cfg, opts, token=srv.api_key, concurrency=opts.concurrency, on_progress=on_progress,
        details={"demo": True})
    stored = {(f["owner"], f["name"]): f for f in srv.files() if f["category"] == "user_document"}
    for (user, name), data in made.items():
        rec = stored.get((user, name))
        if rec is not None and srv.file_bytes(rec["id"]) == data:
            result.push_verified += 1
        else:
            result.push_mismatches.append(f"{user}/{name}")


async def _demo_restore(srv: FakeServer, cfg: Config, result: DemoResult, on_progress: Any) -> None:
    """The third act: two backed-up documents are deleted on the server; ``restore`` puts exactly those
    back (same name, bytes and category, new ids), and the mapping old id -> new id is written."""
    import asyncio

    from syncer.restore.job import RestoreJob
    from syncer.restore.options import options_from_config
    from syncer.run.runner import execute

    with_token = set(srv.users[:3])  # the act before wrote their tokens
    gone = [f for f in srv.files() if f["target_type"] == "user" and f["target_id"] in with_token
            and f["category"] == "user_document" and f["name"].isprintable()][:2]
    for f in gone:
        srv.delete_file(f["id"])
    before = {f["id"] for f in srv.files()}
    opts = await asyncio.to_thread(options_from_config, cfg, cfg, mapping_out=result.workdir / "restored-ids.csv")
    result.restore, result.restore_code = await execute(
        RestoreJob, cfg, opts, token=srv.api_key, concurrency=opts.concurrency, on_progress=on_progress,
        details={"demo": True})
    new = [f for f in srv.files() if f["id"] not in before]
    for f in gone:
        back = [n for n in new if (n["target_id"], n["name"], n["sha256"], n["category"])
                == (f["target_id"], f["name"], f["sha256"], f["category"])]
        if len(back) == 1:
            result.restore_verified += 1
        else:
            result.restore_mismatches.append(f["id"])
    if len(new) != len(gone):
        result.restore_mismatches.append(f"{len(new)} documents uploaded for {len(gone)} deleted")


def _demo_key(workdir: Path) -> tuple[Path, str]:
    """The work folder's throwaway age identity (made once; a rerun in the same folder reuses it)."""
    from syncer.crypto.identity import keygen

    path = workdir / "demo-key.txt"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# public key: "):
                return path, line.split(": ", 1)[1].strip()
    return path, keygen(path)[1]


async def _demo_encrypted(srv: FakeServer, cfg: Config, result: DemoResult, on_progress: Any) -> None:
    """The last act: every file backed up again, encrypted (age) to the demo's throwaway key, into
    ``<workdir>/encrypted``; each file decrypted and compared with the server's bytes."""
    import asyncio

    from syncer.crypto.recipients import load_recipients
    from syncer.pull.job import PullJob
    from syncer.pull.options import PullOptions
    from syncer.run.runner import execute

    workdir = result.workdir
    enc = workdir / "encrypted"
    await asyncio.to_thread(shutil.rmtree, enc, True)  # an earlier demo's (the folder is the demo's own)
    await asyncio.to_thread(make_dirs, enc, workdir)
    result.key_path, public = await asyncio.to_thread(_demo_key, workdir)
    ecfg = dataclasses.replace(cfg, manifest=ManifestConfig(path=enc / "syncer-manifest.sqlite"),
                               pull=dataclasses.replace(cfg.pull, dest=enc / "backup", encrypt_to=(public,)))
    await asyncio.to_thread(_write_config_file, ecfg, enc / "syncer.toml")
    targets = tuple([Target("user", u) for u in srv.users] + [Target("visit", v) for v in srv.visits])
    opts = PullOptions(targets=targets, dest=ecfg.pull.dest, concurrency=ecfg.pull.concurrency,
                       recipients=tuple(load_recipients(ecfg.pull.encrypt_to, None)))
    result.encrypted, result.encrypted_code = await execute(
        PullJob, ecfg, opts, token=srv.api_key, concurrency=opts.concurrency, on_progress=on_progress,
        details={"demo": True, "encrypted": True})
    await asyncio.to_thread(_check_encrypted, srv, ecfg, result)


def _check_encrypted(srv: FakeServer, cfg: Config, result: DemoResult) -> None:
    import sqlite3

    from syncer.crypto.identity import load_identities
    from syncer.crypto.stream import open_plaintext

    assert result.key_path is not None
    identities = load_identities(result.key_path)
    conn = sqlite3.connect(cfg.manifest.path)
    try:
        rows = conn.execute("SELECT file_id, local_path FROM pull_items WHERE state = 'done'").fetchall()
    finally:
        conn.close()
    live = {f["id"] for f in srv.files()}
    for file_id, local_path in rows:
        path = cfg.pull.dest / local_path
        data = srv.file_bytes(file_id)
        if local_path.endswith(".age") and b"".join(open_plaintext(path, identities)) == data:
            result.encrypted_verified += 1
            # The decrypt command shown: a file with content and a name that is not one of the hostile ones.
            if result.sample_file is None and data and local_path.isascii() and not path.name.startswith(("_", "-")):
                result.sample_file = path
        else:
            result.encrypted_mismatches.append(file_id)
    if len(rows) != len(live):
        result.encrypted_mismatches.append(f"{len(live) - len(rows)} files not backed up encrypted")
