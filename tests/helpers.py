"""Helpers shared by the test modules: a syncer config for a FakeServer (TOML or in memory), running a pull
or a push in process, and running the CLI (in process through click's CliRunner, or as a real
``python -m syncer`` process).  tests/conftest.py wraps the run helpers as factory fixtures (``run_pull``,
``run_push``, ``pull_config``) that fill in the test's tmp_path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from syncer import config as config_mod
from syncer.cli import main
from syncer.config import ApiConfig, Config, ManifestConfig, PullConfig, RetryConfig
from syncer.fakeserver import FakeServer
from syncer.models import Target
from syncer.pull.job import PullJob
from syncer.pull.options import PullOptions
from syncer.push.job import PushJob
from syncer.push.options import PushOptions
from syncer.run.runner import execute
from syncer.run.stats import RunStats

# The [api] keys of a config without a server: the discard port, where nothing may be sent anyway.
NO_SERVER = {"base_url": "http://127.0.0.1:9", "account_code": "democlinic"}


def server_targets(srv: FakeServer) -> list[str]:
    """Every target of the server, as the config writes them: ``user:ID`` then ``visit:ID``."""
    return [f"user:{u}" for u in srv.users] + [f"visit:{v}" for v in srv.visits]


def all_targets(srv: FakeServer) -> tuple[Target, ...]:
    """Every seeded target of the server: its users, then its visits."""
    return tuple([Target("user", u) for u in srv.users] + [Target("visit", v) for v in srv.visits])


# Retries fast enough for tests, slow enough that an outage of a few tries is ridden out.
MIN_WAIT, MAX_WAIT = 0.005, 0.05


def pull_config(srv: FakeServer, tmp: Path, *, attempts: int = 8, concurrency: int = 8, timeout_read: float = 5.0,
                dest: Path | None = None, manifest: Path | None = None) -> Config:
    """An in-memory pull config for ``srv``: manifest and backup in ``tmp``, fast retries."""
    return Config(
        api=ApiConfig(base_url=srv.base_url, account_code=srv.account_code, timeout_connect=5,
                      timeout_read=timeout_read),
        manifest=ManifestConfig(path=manifest or tmp / "manifest.sqlite"),
        retry=RetryConfig(attempts=attempts, max_wait=MAX_WAIT, min_wait=MIN_WAIT),
        pull=PullConfig(dest=dest or tmp / "backup", concurrency=concurrency),
    )


async def pull(srv: FakeServer, cfg: Config, *, targets: tuple[Target, ...] | None = None, token: str | None = None,
               client_factory: Any = None, **options: Any) -> tuple[RunStats, int]:
    """A pull run in this process, as the CLI runs it: every target of ``srv`` unless ``targets``, the
    server's key unless ``token``; ``options`` override PullOptions' defaults.  Returns (stats, exit code)."""
    opts = PullOptions(targets=targets if targets is not None else all_targets(srv), dest=cfg.pull.dest,
                       concurrency=cfg.pull.concurrency, **options)
    return await execute(PullJob, cfg, opts, token=srv.api_key if token is None else token,
                         concurrency=cfg.pull.concurrency, client_factory=client_factory)


async def push(srv: FakeServer, cfg: Config | Path, *, users: tuple[str, ...] = (), token: str | None = None,
               client_factory: Any = None) -> tuple[RunStats, int]:
    """A push run in this process, as the CLI runs it: ``cfg`` is a Config or a TOML file (loaded without
    the environment); ``users`` narrows the run as ``--user`` does.  Returns (stats, exit code)."""
    if isinstance(cfg, Path):
        cfg = config_mod.load(cfg, env={})
    opts = PushOptions.from_config(cfg, users)
    return await execute(PushJob, cfg, opts, token=srv.api_key if token is None else token,
                         concurrency=cfg.push.concurrency, client_factory=client_factory)


def write_tokens(path: Path, tokens: dict[str, str], mode: int = 0o600) -> Path:
    """A push tokens file (CSV ``user_id,token``) at ``path`` with ``mode``."""
    path.write_text("user_id,token\n" + "".join(f"{u},{t}\n" for u, t in tokens.items()), encoding="utf-8")
    os.chmod(path, mode)
    return path


def write_config(folder: Path, srv: FakeServer | None = None, *,
                 base_url: str | None = None, account_code: str | None = None,
                 timeout_connect: float | None = None, timeout_read: float | None = None,
                 manifest: str = "manifest.sqlite",
                 attempts: int | None = None, min_wait: float | None = None, max_wait: float | None = None,
                 dest: str = "backup", concurrency: int | None = None, targets: list[str] | None = None,
                 push_source: str | None = None, push_tokens: str = "tokens.csv", push_concurrency: int | None = None,
                 extra: str = "", name: str = "syncer.toml") -> Path:
    """Write ``folder/name`` and return its path.

    ``base_url`` and ``account_code`` default to the server's (left out without a server); ``targets``
    defaults to every target of the server (``[]`` without one).  Every other key that is None is left out,
    so the syncer's own default applies; ``[retry]`` is written only when one of its keys is given and
    ``[push]`` only with ``push_source``.  ``extra`` is TOML text appended as is (right after ``[pull]``
    unless a ``[push]`` section is written)."""
    if base_url is None and srv is not None:
        base_url = srv.base_url
    if account_code is None and srv is not None:
        account_code = srv.account_code
    if targets is None:
        targets = server_targets(srv) if srv is not None else []

    def keys(**values: object) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items() if v is not None)

    text = "[api]\n" + keys(base_url=base_url, account_code=account_code, timeout_connect=timeout_connect,
                            timeout_read=timeout_read)
    text += "[manifest]\n" + keys(path=manifest)
    if (attempts, min_wait, max_wait) != (None, None, None):
        text += "[retry]\n" + keys(attempts=attempts, min_wait=min_wait, max_wait=max_wait)
    text += "[pull]\n" + keys(dest=dest, concurrency=concurrency, targets=targets)
    if push_source is not None:
        text += "[push]\n" + keys(source=push_source, tokens_file=push_tokens, concurrency=push_concurrency)
    path = folder / name
    path.write_text(text + extra, encoding="utf-8")
    return path


def cli(args: list[str], token: str | None = None) -> Result:
    """``syncer ARGS`` in this process, with VSEE_API_TOKEN set to ``token`` (unset if None) and
    SYNCER_CONFIG unset; exceptions propagate."""
    return CliRunner().invoke(main, args, env={"VSEE_API_TOKEN": token, "SYNCER_CONFIG": None},
                              catch_exceptions=False)


def spawn_syncer(cfg: Path, srv: FakeServer, *args: str, **kw) -> subprocess.Popen:
    """``python -m syncer ARGS -c CFG`` as a separate process in the config's folder, with the server's
    token; stdout and stderr piped."""
    env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
    return subprocess.Popen([sys.executable, "-m", "syncer", *args, "-c", str(cfg)], env=env, cwd=cfg.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
