"""Configuration: frozen dataclasses, their defaults, and ``load()`` which merges TOML, env and flags.

Precedence: command-line flags > the TOML file > the defaults below.  The file is found at
``--config/-c``, else ``$SYNCER_CONFIG``, else ``./syncer.toml`` (absent is fine: defaults apply).
Relative paths in the file are relative to the file's folder, and so is the default manifest (so
``syncer status -c CFG`` finds it from any folder).  The manifest path alone also has an environment
variable: ``--manifest`` > ``$SYNCER_MANIFEST`` > ``manifest.path`` >
``<config folder>/syncer-manifest.sqlite``, or ``./syncer-manifest.sqlite`` with no config file (one
shared config, one manifest per shard).
A UTF-8 byte order mark at the start of the file is accepted.  Secrets never live here: the account
API key comes from the environment variable named by ``api.token_env``; per-user tokens come from the
0600 tokens file.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from syncer.errors import ConfigError
from syncer.models import CATEGORIES, Target

DEFAULT_CONFIG_NAME = "syncer.toml"
DEFAULT_TOKEN_ENV = "VSEE_API_TOKEN"
DEFAULT_TIMEOUT_CONNECT = 10.0
DEFAULT_TIMEOUT_READ = 60.0
DEFAULT_ATTEMPTS = 6
DEFAULT_MAX_WAIT = 30.0
DEFAULT_PULL_CONCURRENCY = 32
DEFAULT_PUSH_CONCURRENCY = 16
DEFAULT_SEGMENT_THRESHOLD = 64 * 2**20   # bytes: a file at least this big may be fetched in parallel segments
DEFAULT_SEGMENTS = 8                      # connections one big file may use at once (tests/perf: 4 vs 8)
MIN_SEGMENT_THRESHOLD = 2**20
DEFAULT_MANIFEST = "syncer-manifest.sqlite"
MANIFEST_ENV = "SYNCER_MANIFEST"
DEFAULT_PROGRESS_INTERVAL = 30.0


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = ""
    account_code: str = ""
    token_env: str = DEFAULT_TOKEN_ENV
    timeout_connect: float = DEFAULT_TIMEOUT_CONNECT
    timeout_read: float = DEFAULT_TIMEOUT_READ
    ca_bundle: Path | None = None


@dataclass(frozen=True)
class ManifestConfig:
    path: Path = Path(DEFAULT_MANIFEST)


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = DEFAULT_ATTEMPTS      # tries of one idempotent request, the first included
    max_wait: float = DEFAULT_MAX_WAIT    # cap on one backoff sleep or Retry-After, seconds
    min_wait: float = 0.2                 # first backoff step, seconds


@dataclass(frozen=True)
class PullConfig:
    dest: Path | str = Path("backup")     # a folder, or "s3://bucket/prefix" (kept as a string)
    targets: tuple[str, ...] = ()
    targets_file: Path | None = None
    categories: tuple[str, ...] = ()      # empty: every category
    include_shared: bool = False
    concurrency: int = DEFAULT_PULL_CONCURRENCY
    segment_threshold: int = DEFAULT_SEGMENT_THRESHOLD
    segments: int = DEFAULT_SEGMENTS      # 1: every file over one connection
    # How small files (< 1 MiB) are made durable before they are recorded (syncer.local.batch): "syncfs",
    # one syncfs(2) a batch where the kernel reports errors through it (else an fsync each), or "fsync".
    durability: str = "syncfs"
    # Encryption at rest (age): recipients (public keys) and/or an age recipients file.  Checked by
    # syncer.crypto.recipients when a pull starts (pyrage is imported only then).
    encrypt_to: tuple[str, ...] = ()
    encrypt_to_file: Path | None = None


@dataclass(frozen=True)
class S3Config:
    """An ``s3://`` pull.dest's store.  Credentials are never here: AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, web identity or the instance's role (obstore's defaults)."""

    endpoint_url: str = ""                # an S3-compatible store (MinIO, Ceph, B2, Wasabi); empty: AWS
    region: str = ""                      # empty: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1
    storage_class: str = ""               # e.g. STANDARD_IA; empty: the bucket's default
    object_lock_days: int = 0             # > 0: each object retained this long (bucket with Object Lock)
    object_lock_mode: str = "governance"  # governance | compliance


@dataclass(frozen=True)
class PushConfig:
    source: Path = Path("upload")
    tokens_file: Path | None = None
    category: str = "user_document"
    concurrency: int = DEFAULT_PUSH_CONCURRENCY


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL


@dataclass(frozen=True)
class Config:
    api: ApiConfig = field(default_factory=ApiConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    pull: PullConfig = field(default_factory=PullConfig)
    push: PushConfig = field(default_factory=PushConfig)
    s3: S3Config = field(default_factory=S3Config)
    log: LogConfig = field(default_factory=LogConfig)
    source_path: Path | None = None       # the TOML file this came from, if any

    def api_base_url(self) -> str:
        """``api.base_url``, checked when the config was loaded; a ConfigError when it is not set.  The one
        check every command that talks to the API makes (pull, push, ls, the dry runs)."""
        if not self.api.base_url:
            raise ConfigError("api.base_url is not set in the config")
        return self.api.base_url

    def api_token(self, env: Mapping[str, str] | None = None) -> str:
        """The account API key from the environment; a clear ConfigError when it is not set."""
        env = os.environ if env is None else env
        token = env.get(self.api.token_env, "").strip()
        if not token:
            raise ConfigError(
                f"the API token is not set: export {self.api.token_env}=<your account API key> "
                "(api.token_env names the variable)"
            )
        return token


_SECTIONS: dict[str, type] = {
    "api": ApiConfig,
    "manifest": ManifestConfig,
    "retry": RetryConfig,
    "pull": PullConfig,
    "push": PushConfig,
    "s3": S3Config,
    "log": LogConfig,
}
_PATH_KEYS = {("api", "ca_bundle"), ("manifest", "path"), ("pull", "dest"), ("pull", "targets_file"),
              ("pull", "encrypt_to_file"),
              ("push", "source"), ("push", "tokens_file")}


def find_config(explicit: str | os.PathLike | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read: the flag, else $SYNCER_CONFIG, else ./syncer.toml if it exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    if env.get("SYNCER_CONFIG"):
        path = Path(env["SYNCER_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"config file {path} (from $SYNCER_CONFIG) does not exist")
        return path
    path = Path(DEFAULT_CONFIG_NAME)
    return path if path.is_file() else None


def load(
    path: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read the config file (if any), apply flag overrides (None values are ignored), validate."""
    env = os.environ if env is None else env
    file_path = find_config(path, env)
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if file_path is not None:
        try:
            # utf-8-sig: an editor's byte order mark (Windows Notepad) is not part of the TOML.
            raw = tomllib.loads(file_path.read_text(encoding="utf-8-sig"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file_path}: not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path}: cannot read it: {exc}") from exc
        base_dir = file_path.resolve().parent
    where = str(file_path) if file_path else "defaults"
    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"{where}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {name} must be a table ([{name}])")
        sections[name] = {k: _convert(name, k, v, base_dir, where) for k, v in value.items()}
    manifest = sections.setdefault("manifest", {})
    if env.get(MANIFEST_ENV):  # over the file, under --manifest (applied with the overrides below)
        manifest["path"] = _convert("manifest", "path", env[MANIFEST_ENV], Path.cwd(), f"${MANIFEST_ENV}")
    manifest.setdefault("path", base_dir / DEFAULT_MANIFEST)
    for name, values in (overrides or {}).items():
        for key, value in values.items():
            if value is None:
                continue
            sections.setdefault(name, {})[key] = _convert(name, key, value, Path.cwd(), "command line")
    built = {name: cls(**sections.get(name, {})) for name, cls in _SECTIONS.items()}
    cfg = Config(**built, source_path=file_path)
    _validate(cfg)
    return cfg


def _convert(section: str, key: str, value: Any, base_dir: Path, where: str) -> Any:
    cls = _SECTIONS[section]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        raise ConfigError(f"{where}: unknown key {section}.{key} (known: {', '.join(fields)})")
    default = fields[key].default if fields[key].default is not dataclasses.MISSING else None
    full = f"{section}.{key}"
    if (section, key) in _PATH_KEYS:
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ConfigError(f"{where}: {full} must be a path (a non-empty string)")
        if (section, key) == ("pull", "dest") and str(value).startswith("s3://"):
            return str(value)  # a bucket, not a path: kept as the URL (syncer.store)
        if (section, key) == ("pull", "dest") and str(value).lower().startswith("s3:"):
            # "S3://bucket" or "s3:/bucket" would otherwise be a local folder of that name: the backup
            # would land on this machine's disk while the operator thinks it is in the bucket.
            raise ConfigError(f"{where}: pull.dest {str(value)!r} is not a bucket URL: write s3://bucket/prefix"
                              " (lower case, two slashes), or a folder path")
        path = Path(os.path.expanduser(str(value)))
        return path if path.is_absolute() else base_dir / path
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {full} must be true or false, not {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {full} must be a whole number, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {full} must be a number, not {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {full} must be a string, not {value!r}")
        return value
    # tuple-valued keys: targets, categories
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: {full} must be a list of strings, not {value!r}")


def _validate(cfg: Config) -> None:
    api = cfg.api
    if api.base_url:
        refusal = url_refusal(api.base_url)
        if refusal:
            raise ConfigError(f"api.base_url {api.base_url!r} {refusal}")
        parts = urlsplit(api.base_url)
        if parts.query or parts.username or parts.password:
            raise ConfigError("api.base_url must not carry a query string or credentials")
    if not api.token_env.replace("_", "").isalnum():
        raise ConfigError(f"api.token_env {api.token_env!r} is not an environment variable name")
    for key in ("timeout_connect", "timeout_read"):
        if not _positive(getattr(api, key)):
            raise ConfigError(f"api.{key} must be greater than 0")
    if cfg.retry.attempts < 1:
        raise ConfigError("retry.attempts must be at least 1")
    if not all(math.isfinite(w) and w >= 0 for w in (cfg.retry.max_wait, cfg.retry.min_wait)):
        raise ConfigError("retry.max_wait and retry.min_wait must not be negative")
    for name, section in (("pull", cfg.pull), ("push", cfg.push)):
        if not 1 <= section.concurrency <= 512:
            raise ConfigError(f"{name}.concurrency must be between 1 and 512, not {section.concurrency}")
    if not 1 <= cfg.pull.segments <= 16:
        raise ConfigError("pull.segments must be between 1 and 16")
    if cfg.pull.durability not in ("syncfs", "fsync"):
        raise ConfigError(f"pull.durability must be \"syncfs\" or \"fsync\", not {cfg.pull.durability!r}")
    if cfg.pull.segment_threshold < MIN_SEGMENT_THRESHOLD:
        raise ConfigError(f"pull.segment_threshold must be at least {MIN_SEGMENT_THRESHOLD} bytes (1 MiB)")
    for text in cfg.pull.targets:
        Target.parse(text)
    for i, text in enumerate(cfg.pull.encrypt_to):
        if not text.strip():
            raise ConfigError(f"pull.encrypt_to[{i}] is empty: give a recipient (age1... or ssh-ed25519 ...)")
    for cat in cfg.pull.categories:
        if cat not in CATEGORIES:
            raise ConfigError(f"pull.categories: unknown category {cat!r} (known: {', '.join(CATEGORIES)})")
    if cfg.push.category not in CATEGORIES:
        raise ConfigError(f"push.category: unknown category {cfg.push.category!r}")
    if isinstance(cfg.pull.dest, str):
        Location.parse(cfg.pull.dest)
    if cfg.s3.endpoint_url:
        why = url_refusal(cfg.s3.endpoint_url)
        if why:
            raise ConfigError(f"s3.endpoint_url {why}")
        parts = urlsplit(cfg.s3.endpoint_url)
        if parts.query or parts.username or parts.password:
            raise ConfigError("s3.endpoint_url must not carry a query string or credentials")
    if cfg.s3.object_lock_days < 0:
        raise ConfigError("s3.object_lock_days must not be negative")
    if cfg.s3.object_lock_mode.lower() not in ("governance", "compliance"):
        raise ConfigError("s3.object_lock_mode must be 'governance' or 'compliance'")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError(f"log.format must be 'text' or 'json', not {cfg.log.format!r}")
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level must be debug, info, warning or error, not {cfg.log.level!r}")
    if not _positive(cfg.log.progress_interval):
        raise ConfigError("log.progress_interval (--progress-interval) must be a number of seconds greater than 0")


def _positive(x: float) -> bool:
    """A usable duration: finite and above 0 (nan compares false to everything, so test it first)."""
    return math.isfinite(x) and x > 0


def url_refusal(url: str) -> str | None:
    """Why syncer will not send a request to ``url`` (a predicate: "uses plain http to ..."), or None when
    it may.  The one rule for the API's
    ``base_url`` (checked at load: exit 2), every view link and every redirect (checked by the client
    before it connects: the item fails permanently): https to any host; plain http only to a loopback
    address, 127.0.0.0/8 or ::1.  Not to a name, not even ``localhost``: a name can resolve elsewhere,
    and a view link carries its ``auth_code`` and the bytes are patient data."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return "is not an http(s) URL"
    if scheme == "http" and not _is_loopback(host):
        return (f"uses plain http to {host}, which would travel in clear: use https (plain http is allowed"
                " only to a loopback address, 127.0.0.0/8 or ::1)")
    return None


@functools.lru_cache(maxsize=64)  # every view link is checked: a run meets a handful of hosts
def _is_loopback(host: str) -> bool:
    """A literal loopback address (127.0.0.0/8, ::1); never a name."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# An object store destination, s3://bucket/prefix (syncer.store writes there).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # no leading or trailing "/"; "" for the bucket's root

    @classmethod
    def parse(cls, dest: str) -> Location:
        parts = urlsplit(dest)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"pull.dest {dest!r}: an object store destination is s3://bucket/prefix")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ConfigError(f"pull.dest {dest!r}: no query, fragment or credentials in an s3:// URL")
        if not _BUCKET.match(parts.netloc):
            raise ConfigError(f"pull.dest {dest!r}: {parts.netloc!r} is not a valid bucket name")
        prefix = parts.path.strip("/")
        if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise ConfigError(f"pull.dest {dest!r}: the prefix has an empty, '.' or '..' segment")
        return cls(parts.netloc, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
