"""pull.dest: a bucket URL is only ever ``s3://...``; anything that looks like one but is not is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncer.config import load
from syncer.errors import ConfigError


def _load(tmp_path: Path, dest: str):
    cfg = tmp_path / "syncer.toml"
    cfg.write_text(f'[pull]\ndest = "{dest}"\n', encoding="utf-8")
    return load(cfg, env={})


@pytest.mark.parametrize("dest", ["S3://clinic-backup/x", "s3:/clinic-backup/x", "S3:clinic-backup"])
def test_a_mistyped_bucket_url_is_refused_not_taken_for_a_local_folder(tmp_path: Path, dest: str) -> None:
    with pytest.raises(ConfigError, match="pull.dest .* is not a bucket URL"):
        _load(tmp_path, dest)
    assert not any(tmp_path.rglob("clinic-backup*"))


def test_bucket_urls_and_folders_still_load(tmp_path: Path) -> None:
    assert _load(tmp_path, "s3://clinic-backup/x").pull.dest == "s3://clinic-backup/x"
    assert _load(tmp_path, "backup").pull.dest == tmp_path / "backup"
    assert _load(tmp_path, "s3-archive/x").pull.dest == tmp_path / "s3-archive" / "x"
