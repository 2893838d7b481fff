"""Targets: flags, files (lines or CSV), bad lines named by file and line, and stable shards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from syncer.errors import ConfigError
from syncer.inputs.targets import parse_shard, parse_targets_file, select_targets, shard_of
from syncer.models import Target


def test_lines_with_comments_and_blanks(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# nightly\nuser:1\n\n  visit:22  # a comment\nUSER:3\n")
    assert parse_targets_file(f) == [Target("user", "1"), Target("visit", "22"), Target("user", "3")]


def test_csv_with_header(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("target_type,target_id\nuser,10\nvisit,20\n\n")
    assert parse_targets_file(f) == [Target("user", "10"), Target("visit", "20")]


@pytest.mark.parametrize("content,line", [
    ("user:1\nbogus\n", 2),
    ("user:1\nuser:\n", 2),
    ("intake:5\n", 1),
    ("user:../../etc\n", 1),
    ("target_type,target_id\nuser,1\nuser,2,3\n", 3),
    ("target_type,target_id\npatient,1\n", 2),
])
def test_a_bad_line_names_file_and_line(tmp_path, content, line):
    f = tmp_path / "targets.txt"
    f.write_text(content)
    with pytest.raises(ConfigError) as err:
        parse_targets_file(f)
    assert f"{f}:{line}:" in str(err.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_targets_file(tmp_path / "nope.txt")


def test_select_dedupes_and_keeps_order(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("user:2\nuser:1\n")
    assert select_targets(["user:1", "visit:9"], [f], None) == [
        Target("user", "1"), Target("visit", "9"), Target("user", "2")]


def test_shards_partition_the_targets_stably():
    targets = [Target("user", str(i)) for i in range(1000)]
    texts = [str(t) for t in targets]
    shards = [select_targets(texts, [], (k, 4)) for k in range(4)]
    assert sorted(sum(shards, []), key=lambda t: int(t.id)) == targets  # every target exactly once
    assert all(150 < len(s) < 350 for s in shards)  # and roughly even
    # Stable across processes (Python's hash() is salted per process; ours must not be).
    code = "from syncer.inputs.targets import shard_of; from syncer.models import Target; " \
           "print([shard_of(Target('user', str(i)), 4) for i in range(50)])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2)}
    assert len(outs) == 1
    assert outs.pop().strip() == str([shard_of(Target("user", str(i)), 4) for i in range(50)])


@pytest.mark.parametrize("text", ["1", "4/4", "-1/4", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(ConfigError):
        parse_shard(text)


def test_good_shard():
    assert parse_shard("0/3") == (0, 3) and parse_shard(None) is None
