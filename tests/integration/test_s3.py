"""pull into an S3-compatible bucket: moto's S3 server on 127.0.0.1, the built-in Files API server, the
real code paths (obstore over HTTP).  The bucket is read back with boto3, an independent client."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import write_config

from syncer.config import ApiConfig, Config, ManifestConfig, PullConfig, RetryConfig, S3Config
from syncer.fakeserver import FakeServer
from syncer.models import Target
from syncer.pull.job import PullJob
from syncer.pull.options import PullOptions
from syncer.run.runner import execute

MIB = 1 << 20
PREFIX = "clinic/backup"


def s3_cfg(srv: FakeServer, s3, tmp: Path, *, prefix: str = PREFIX, concurrency: int = 8,
           manifest: str = "manifest.sqlite") -> Config:
    return Config(
        api=ApiConfig(base_url=srv.base_url, account_code=srv.account_code, timeout_connect=5, timeout_read=10),
        manifest=ManifestConfig(path=tmp / manifest),
        retry=RetryConfig(attempts=4, max_wait=0.2, min_wait=0.01),
        pull=PullConfig(dest=f"s3://{s3.bucket}/{prefix}", concurrency=concurrency),
        s3=S3Config(endpoint_url=s3.endpoint, region="us-east-1"),
    )


def all_targets(srv: FakeServer) -> tuple[Target, ...]:
    return tuple([Target("user", u) for u in srv.users] + [Target("visit", v) for v in srv.visits])


async def run_pull(srv: FakeServer, cfg: Config, targets: tuple[Target, ...] | None = None):
    opts = PullOptions(targets=targets or all_targets(srv), dest=cfg.pull.dest, concurrency=cfg.pull.concurrency)
    return await execute(PullJob, cfg, opts, token=srv.api_key, concurrency=cfg.pull.concurrency)


def manifest_rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM pull_items")]
    finally:
        conn.close()


def assert_bucket_faithful(srv: FakeServer, s3, rows: list[dict], prefix: str = PREFIX) -> dict[str, dict]:
    """Every row is done and its object (same key layout as a folder) holds the server's bytes."""
    objects = s3.keys(prefix + "/")
    data_keys = {k for k in objects if "/_syncer/" not in k}
    assert data_keys == {f"{prefix}/{r['local_path']}" for r in rows}
    for row in rows:
        assert row["state"] == "done", row
        key = f"{prefix}/{row['local_path']}"
        body = s3.read(key)
        assert body == srv.file_bytes(row["file_id"]), row["file_id"]
        assert row["sha256"] == hashlib.sha256(body).hexdigest()
        assert objects[key]["Size"] == len(body)
    return objects


# A few 20 MiB files (multipart), one just above the threshold, the rest small: cycled over 200 files.
SIZES = (20 * MIB, 0, 1, 700, 4_000, 40_000, 150_000, 9 * MIB) + (2_000, 30_000) * 21


async def test_pull_200_hostile_files_into_a_bucket_is_faithful_and_a_rerun_uploads_nothing(s3, tmp_path):
    async with FakeServer(seed=16, users=5, files_per_user=33, visits=3, files_per_visit=3, hostile_names=True,
                          sizes=SIZES) as srv:
        assert len(srv.files()) == 200
        assert sum(f["size"] >= 20 * MIB for f in srv.files()) >= 3
        cfg = s3_cfg(srv, s3, tmp_path)
        stats, code = await run_pull(srv, cfg)
        assert code == 0, stats
        rows = manifest_rows(cfg.manifest.path)
        assert len(rows) == stats.files_done == 200
        objects = assert_bucket_faithful(srv, s3, rows)
        assert any(s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"].count("-") for k, o in objects.items()
                   if o["Size"] >= 20 * MIB), "no multipart upload happened: the test proved nothing"
        # A single PUT carries the whole file's sha256 as metadata.  (obstore also sends
        # x-amz-checksum-sha256, which S3 checks on arrival; moto records it only from AWS SDKs.)
        for r in rows:
            head = s3.client.head_object(Bucket=s3.bucket, Key=f"{PREFIX}/{r['local_path']}")
            assert head["Metadata"].get("sha256") == (r["sha256"] if r["size"] <= 8 * MIB else None)
        assert not s3.uploads()

        s3.requests.clear()
        views = srv.counters["view"]
        stats2, code2 = await run_pull(srv, cfg)
        assert code2 == 0 and stats2.files_done == 0 and stats2.skipped == 200, stats2
        assert srv.counters["view"] == views, "a rerun downloaded files again"
        assert [p for p in s3.puts() if "/_syncer/" not in p] == [], "a rerun uploaded objects again"
        after = s3.keys(PREFIX + "/")
        assert {k: o["LastModified"] for k, o in after.items() if "/_syncer/" not in k} == \
            {k: o["LastModified"] for k, o in objects.items() if "/_syncer/" not in k}


async def test_a_deleted_object_is_fetched_again_and_a_killed_runs_object_is_adopted(s3, tmp_path):
    async with FakeServer(seed=17, users=2, files_per_user=4, sizes=(3_000, 50_000)) as srv:
        cfg = s3_cfg(srv, s3, tmp_path)
        stats, code = await run_pull(srv, cfg)
        assert code == 0 and stats.files_done == 8
        rows = manifest_rows(cfg.manifest.path)
        gone, unrecorded = rows[0], rows[1]
        s3.client.delete_object(Bucket=s3.bucket, Key=f"{PREFIX}/{gone['local_path']}")
        # As if killed after the PUT but before the manifest heard of it.
        conn = sqlite3.connect(cfg.manifest.path)
        conn.execute("UPDATE pull_items SET state='pending', sha256=NULL WHERE file_id=?", (unrecorded["file_id"],))
        conn.commit()
        conn.close()
        views = srv.counters["view"]
        stats2, code2 = await run_pull(srv, cfg)
        assert code2 == 0 and stats2.files_done == 1, stats2
        assert srv.counters["view"] == views + 1
        rows2 = {r["file_id"]: r for r in manifest_rows(cfg.manifest.path)}
        assert rows2[unrecorded["file_id"]]["state"] == "done"
        assert rows2[unrecorded["file_id"]]["sha256"] == unrecorded["sha256"]
        assert_bucket_faithful(srv, s3, list(rows2.values()))


def test_a_local_pull_never_imports_obstore(tmp_path):
    with FakeServer(seed=18, users=1, files_per_user=2).run_in_thread() as srv:
        cfg = write_config(tmp_path, srv)
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "syncer", "pull", "-c", str(cfg), "-q"],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "syncer.pull.job" in proc.stderr, "importtime printed nothing: the test proved nothing"
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not {m for m in imported if m.split(".")[0] in ("obstore", "boto3", "botocore", "moto")}
        assert len(list((tmp_path / "backup").rglob("*.*"))) >= 2


def s3_toml(tmp: Path, srv: FakeServer, s3, *, prefix: str = PREFIX, name: str = "syncer.toml",
            manifest: str = "manifest.sqlite", concurrency: int = 4) -> Path:
    return write_config(tmp, srv, dest=f"s3://{s3.bucket}/{prefix}", manifest=manifest, concurrency=concurrency,
                        attempts=4, min_wait=0.01, max_wait=0.2, name=name,
                        extra=f'[s3]\nendpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\n')


def run_cli(cfg: Path, srv: FakeServer, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
    return subprocess.run([sys.executable, "-m", "syncer", *args, "-c", str(cfg)], env=env, cwd=cfg.parent,
                          capture_output=True, text=True, timeout=timeout)


def test_sigkill_during_multipart_uploads_leaves_no_partial_object_and_the_rerun_cleans_up(s3, tmp_path):
    with FakeServer(seed=19, users=2, files_per_user=3, sizes=(20 * MIB, 24 * MIB, 5_000)).run_in_thread() as srv:
        cfg = s3_toml(tmp_path, srv, s3)
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "-q"], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not s3.uploads() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        in_flight = s3.uploads()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert in_flight, "the kill did not land during a multipart upload: the test proved nothing"
        assert s3.uploads(), "an incomplete upload should be left by the kill"
        sizes = {f["id"]: f["size"] for f in srv.files()}
        visible = s3.keys(PREFIX + "/")
        for key, obj in visible.items():  # whatever is visible is whole
            assert "/_syncer/" in key or obj["Size"] in sizes.values(), key
        assert f"{PREFIX}/_syncer/all/running" in visible  # how the next run knows this one was killed

        done = run_cli(cfg, srv, "pull", "-q")
        assert done.returncode == 0, done.stderr[-3000:]
        assert_bucket_faithful(srv, s3, manifest_rows(tmp_path / "manifest.sqlite"))
        assert s3.uploads() == [], "the rerun left an incomplete multipart upload"
        assert f"{PREFIX}/_syncer/all/running" not in s3.keys(PREFIX + "/")


def test_a_fresh_machine_resumes_from_the_snapshot_and_downloads_nothing(s3, tmp_path):
    with FakeServer(seed=20, users=3, files_per_user=5, hostile_names=True).run_in_thread() as srv:
        first, fresh = tmp_path / "pod-1", tmp_path / "pod-2"
        first.mkdir()
        fresh.mkdir()
        done = run_cli(s3_toml(first, srv, s3), srv, "pull", "-q")
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{PREFIX}/_syncer/all/manifest.sqlite" in s3.keys(PREFIX + "/_syncer/")
        views = srv.counters["view"]
        assert views == len(srv.files())
        dry = run_cli(first / "syncer.toml", srv, "pull", "--dry-run")
        assert dry.returncode == 0 and "total: 0 files" in dry.stdout, dry.stdout + dry.stderr

        s3.requests.clear()
        cfg = s3_toml(fresh, srv, s3)
        again = run_cli(cfg, srv, "pull")
        assert again.returncode == 0, again.stderr[-3000:]
        assert srv.counters["view"] == views, "the fresh machine downloaded files again"
        assert [p for p in s3.puts() if "/_syncer/" not in p] == []
        rows = manifest_rows(fresh / "manifest.sqlite")
        assert len(rows) == len(srv.files()) and all(r["state"] == "done" for r in rows)
        assert os.stat(fresh / "manifest.sqlite").st_mode & 0o077 == 0
        assert "snapshot" in again.stderr  # the operator is told where the manifest came from


def test_a_missing_bucket_stops_the_run_before_any_download_with_the_stores_words(s3, tmp_path):
    with FakeServer(seed=21, users=1, files_per_user=3).run_in_thread() as srv:
        cfg = write_config(tmp_path, srv, dest="s3://no-such-bucket/x",
                           extra=f'[s3]\nendpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\n')
        done = run_cli(cfg, srv, "pull")
        assert done.returncode == 2, done.stderr[-3000:]
        assert "NoSuchBucket" in done.stderr and "s3://no-such-bucket/x" in done.stderr
        assert srv.counters["view"] == 0 and srv.counters["list"] == 0
        assert not (tmp_path / "manifest.sqlite").exists()


def test_rejected_credentials_stop_the_run_with_exit_3_and_no_secret_in_the_output(s3, tmp_path, monkeypatch):
    import moto.settings

    secret = "wJalrXUtnFEMI-not-a-real-secret-K7MDENG"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with FakeServer(seed=22, users=1, files_per_user=3).run_in_thread() as srv:
        cfg = s3_toml(tmp_path, srv, s3)
        saved = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # moto checks every signature from now on
        try:
            done = run_cli(cfg, srv, "pull")
        finally:
            moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = saved
        assert done.returncode == 3, done.stderr[-3000:]
        assert "InvalidAccessKeyId" in done.stderr or "SignatureDoesNotMatch" in done.stderr, done.stderr[-3000:]
        assert secret not in done.stderr + done.stdout
        assert srv.counters["view"] == 0


def test_config_refuses_plain_http_to_a_remote_endpoint_and_a_bad_bucket_url(tmp_path):
    from syncer import config
    from syncer.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text('[pull]\ndest = "s3://bkt/p"\n[s3]\nendpoint_url = "http://minio.example.com:9000"\n')
    with pytest.raises(ConfigError, match="plain http"):
        config.load(path, env={})
    path.write_text('[pull]\ndest = "s3://bkt/p"\n[s3]\nendpoint_url = "https://minio.example.com:9000"\n')
    assert config.load(path, env={}).pull.dest == "s3://bkt/p"
    for bad in ("s3://", "s3://B/x", "s3://bkt/a//b", "s3://bkt/../x", "s3://key:secret@bkt/x"):
        path.write_text(f'[pull]\ndest = "{bad}"\n')
        with pytest.raises(ConfigError):
            config.load(path, env={})


def test_verify_reads_objects_back_and_quick_compares_listing_and_stored_checksums(s3, tmp_path):
    import json

    with FakeServer(seed=23, users=2, files_per_user=5, sizes=(10 * MIB, 3_000, 40_000)).run_in_thread() as srv:
        cfg = s3_toml(tmp_path, srv, s3)
        assert run_cli(cfg, srv, "pull", "-q").returncode == 0
        for args in (["verify", "--all"], ["verify", "--all", "--quick"], ["verify", "--sample", "3"]):
            ok = run_cli(cfg, srv, *args, "--json")
            assert ok.returncode == 0, ok.stdout + ok.stderr
            report = json.loads(ok.stdout)
            assert report["passed"] and report["checked"] == (3 if "--sample" in args else 10)
        assert json.loads(run_cli(cfg, srv, "verify", "--all", "--json").stdout)["bytes_hashed"] > 10 * MIB

        rows = sorted(manifest_rows(tmp_path / "manifest.sqlite"), key=lambda r: r["size"])
        small, big = rows[0], rows[-1]
        # Same sizes, other bytes: the full check sees both; the quick one sees the small object by its
        # stored checksum (a copy whose metadata differs) and cannot see the multipart one (size only).
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{small['local_path']}", Body=b"x" * small["size"],
                             Metadata={"sha256": "0" * 64})
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{big['local_path']}", Body=b"y" * big["size"])
        # Same size, other bytes, written by another tool (no stored checksum): quick must not pass it.
        bare = rows[2]
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/{bare['local_path']}", Body=b"z" * bare["size"])
        gone = rows[1]
        s3.client.delete_object(Bucket=s3.bucket, Key=f"{PREFIX}/{gone['local_path']}")

        full = run_cli(cfg, srv, "verify", "--all", "--json")
        assert full.returncode == 1
        found = json.loads(full.stdout)
        assert {p["file_id"] for p in found["changed"]} == {small["file_id"], big["file_id"], bare["file_id"]}
        assert [p["file_id"] for p in found["missing"]] == [gone["file_id"]]
        quick = json.loads(run_cli(cfg, srv, "verify", "--all", "--quick", "--json").stdout)
        # The big one: size only (a multipart object carries no stored checksum).
        assert {p["file_id"] for p in quick["changed"]} == {small["file_id"], bare["file_id"]}
        assert [p["file_id"] for p in quick["missing"]] == [gone["file_id"]]
        assert quick["bytes_hashed"] == 0


def test_three_shards_at_once_into_one_bucket_cover_every_target_once_and_status_adds_up(s3, tmp_path):
    import json

    with FakeServer(seed=24, users=9, files_per_user=4, visits=3, files_per_visit=2,
                    hostile_names=True).run_in_thread() as srv:
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        procs = []
        for k in range(3):
            pod = tmp_path / f"pod-{k}"
            pod.mkdir()
            cfg = s3_toml(pod, srv, s3)
            procs.append(subprocess.Popen([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "-q",
                                           "--shard", f"{k}/3"], env=env, cwd=pod,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
        per_shard = [manifest_rows(tmp_path / f"pod-{k}" / "manifest.sqlite") for k in range(3)]
        assert all(per_shard), "a shard got no targets: the test proved little"
        targets = [{(r["target_type"], r["target_id"]) for r in rows} for rows in per_shard]
        assert not (targets[0] & targets[1] or targets[0] & targets[2] or targets[1] & targets[2])
        every = [r for rows in per_shard for r in rows]
        assert len(every) == len({r["file_id"] for r in every}) == len(srv.files())
        assert_bucket_faithful(srv, s3, every)
        assert srv.counters["view"] == len(srv.files())

        fresh = tmp_path / "ops"
        fresh.mkdir()
        st = run_cli(s3_toml(fresh, srv, s3), srv, "status", "--all-shards", "--json")
        assert st.returncode == 0, st.stderr
        fleet = json.loads(st.stdout)
        assert [s["shard"] for s in fleet["shards"]] == ["0-of-3", "1-of-3", "2-of-3"]
        assert fleet["total"]["pull"]["states"]["done"]["count"] == len(srv.files())
        assert fleet["total"]["pull"]["total"]["bytes"] == sum(f["size"] for f in srv.files())
        assert [s["pull"]["total"]["count"] for s in fleet["shards"]] == [len(rows) for rows in per_shard]
        assert all(s["runs"][0]["outcome"] == "ok" and not s["marked_running"] for s in fleet["shards"])
        # A pod of shard 1 killed during its next run leaves its mark: the fleet view says so.
        s3.client.put_object(Bucket=s3.bucket, Key=f"{PREFIX}/_syncer/1-of-3/running", Body=b"{}")
        text = run_cli(s3_toml(fresh, srv, s3), srv, "status", "--all-shards")
        assert f"all shards: pull {len(srv.files())} items" in text.stdout
        marked = [line for line in text.stdout.splitlines() if "marked running" in line]
        assert len(marked) == 1 and marked[0].lstrip().startswith("1-of-3:"), text.stdout


def test_object_lock_days_and_storage_class_apply_to_each_object(s3, tmp_path):
    from datetime import UTC, datetime, timedelta

    bucket = "syncer-locked"
    s3.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    try:
        with FakeServer(seed=25, users=1, files_per_user=3, sizes=(9 * MIB, 2_000)).run_in_thread() as srv:
            cfg = write_config(tmp_path, srv, dest=f"s3://{bucket}/locked", attempts=2, min_wait=0.01, max_wait=0.1,
                               extra=f'[s3]\nendpoint_url = "{s3.endpoint}"\nregion = "us-east-1"\n'
                                     'object_lock_days = 30\nobject_lock_mode = "governance"\n'
                                     'storage_class = "STANDARD_IA"\n')
            done = run_cli(cfg, srv, "pull", "-q")
            assert done.returncode == 0, done.stderr[-3000:]
            rows = manifest_rows(tmp_path / "manifest.sqlite")
            assert len(rows) == 3
            for r in rows:
                if r["size"] > 8 * MIB:
                    # moto (5.2) ignores Object Lock headers on CreateMultipartUpload (S3 honours them):
                    # the multipart object is only checked to have arrived.
                    assert s3.client.head_object(Bucket=bucket, Key=f"locked/{r['local_path']}")["ContentLength"]
                    continue
                head = s3.client.head_object(Bucket=bucket, Key=f"locked/{r['local_path']}")
                assert head.get("ObjectLockMode") == "GOVERNANCE", (r["size"], head)
                assert head.get("StorageClass") == "STANDARD_IA"
                until = head["ObjectLockRetainUntilDate"]
                assert datetime.now(UTC) + timedelta(days=29) < until < datetime.now(UTC) + timedelta(days=31)
                # The store got (and keeps) the checksum obstore sent with the PUT: the file's sha256.
                head = s3.client.head_object(Bucket=bucket, Key=f"locked/{r['local_path']}", ChecksumMode="ENABLED")
                assert base64.b64decode(head["ChecksumSHA256"]).hex() == r["sha256"]
    finally:
        versions = s3.client.list_object_versions(Bucket=bucket)
        for v in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
            s3.client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                    BypassGovernanceRetention=True)
        s3.client.delete_bucket(Bucket=bucket)


def test_sigterm_stops_the_run_and_still_uploads_the_snapshot(s3, tmp_path):
    from syncer.fakeserver import Faults

    with FakeServer(seed=26, users=4, files_per_user=30, faults=Faults(latency_ms=40)).run_in_thread() as srv:
        cfg = s3_toml(tmp_path, srv, s3, concurrency=2)
        env = dict(os.environ, VSEE_API_TOKEN=srv.api_key)
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "pull", "-c", str(cfg), "-q"], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while srv.counters["view"] < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err[-3000:]
        key = f"{PREFIX}/_syncer/all/manifest.sqlite"
        assert key in s3.keys(PREFIX + "/_syncer/"), err[-3000:]
        snap = tmp_path / "snap.sqlite"
        snap.write_bytes(s3.read(key))
        rows = manifest_rows(snap)
        done = [r for r in rows if r["state"] == "done"]
        assert 0 < len(done) < len(srv.files()), "the signal did not land mid-run: the test proved little"
        conn = sqlite3.connect(snap)
        assert conn.execute("SELECT outcome FROM runs").fetchall() == [("interrupted",)]
        conn.close()
        objects = s3.keys(PREFIX + "/")
        assert all(f"{PREFIX}/{r['local_path']}" in objects for r in done)


class SlowDownProxy:
    """An HTTP proxy in front of moto that answers the first ``n`` object PUTs with 503 SlowDown."""

    def __init__(self, upstream: str, n: int):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        host = urlsplit(upstream)
        self.remaining = n
        self.refused = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT" and "/_syncer/" not in self.path:
                    with lock:
                        refuse = proxy.remaining > 0
                        proxy.remaining -= refuse
                        proxy.refused += refuse
                    if refuse:
                        answer = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                                  b"<Message>Please reduce your request rate.</Message></Error>")
                        self.send_response(503)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(answer)))
                        self.end_headers()
                        self.wfile.write(answer)
                        return
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_503_slowdown_is_retried_and_the_backup_arrives_whole(s3, tmp_path):
    proxy = SlowDownProxy(s3.endpoint, n=6)
    try:
        async with FakeServer(seed=27, users=2, files_per_user=5, sizes=(2_000, 30_000)) as srv:
            base = s3_cfg(srv, s3, tmp_path)
            cfg = Config(api=base.api, manifest=base.manifest, retry=base.retry, pull=base.pull,
                         s3=S3Config(endpoint_url=proxy.endpoint, region="us-east-1"))
            stats, code = await run_pull(srv, cfg)
            assert code == 0, stats
            assert proxy.refused == 6, "no SlowDown was answered: the test proved nothing"
            assert stats.failed == 0 and stats.files_done == 10
            assert_bucket_faithful(srv, s3, manifest_rows(cfg.manifest.path))
    finally:
        proxy.close()


async def test_store_errors_never_carry_the_key_or_the_url(s3):
    import obstore

    from syncer.store.s3 import Location, StoreItemError, make_store, translate

    store = make_store(Location.parse(f"s3://{s3.bucket}/{PREFIX}"), S3Config(endpoint_url=s3.endpoint))
    key = "user/123/user_document/Jane Doe HIV results.pdf"
    with pytest.raises(Exception) as caught:
        await obstore.get_async(store, key)
    assert "Jane Doe" in str(caught.value)  # obstore's own text names the object...
    ours = translate(caught.value, "reading an object")
    assert isinstance(ours, StoreItemError)
    assert "Jane" not in str(ours) and "http" not in str(ours) and "HTTP 404" in str(ours)  # ...ours does not


def test_an_object_with_other_bytes_under_a_key_is_never_replaced(s3, tmp_path):
    with FakeServer(seed=28, users=2, files_per_user=3, sizes=(3_000, 40_000)).run_in_thread() as srv:
        cfg = s3_toml(tmp_path, srv, s3)
        assert run_cli(cfg, srv, "pull", "-q").returncode == 0
        rows = manifest_rows(tmp_path / "manifest.sqlite")
        theirs = f"{PREFIX}/{rows[0]['local_path']}"
        s3.client.put_object(Bucket=s3.bucket, Key=theirs, Body=b"someone else's file")
        # The state is lost (no manifest, no snapshot): every key is new to the next run.
        (tmp_path / "manifest.sqlite").unlink()
        s3.client.delete_object(Bucket=s3.bucket, Key=f"{PREFIX}/_syncer/all/manifest.sqlite")
        s3.requests.clear()
        for _ in range(2):  # and a second run, which knows the row, does not replace it either
            again = run_cli(cfg, srv, "pull")
            assert again.returncode == 1, again.stderr[-3000:]
            assert "taken by another object" in again.stderr
            assert s3.read(theirs) == b"someone else's file"
        after = {r["file_id"]: r for r in manifest_rows(tmp_path / "manifest.sqlite")}
        assert after[rows[0]["file_id"]]["state"] == "failed"
        assert all(r["state"] == "done" for fid, r in after.items() if fid != rows[0]["file_id"])
        # The other objects held the same bytes: their refused conditional PUTs (412, which moto does
        # not log) were followed by a HEAD that found the same sha256; no object was written.
        assert [p for p in s3.puts() if "/_syncer/" not in p] == []
        heads = [p for m, p in s3.requests if m == "HEAD" and "/_syncer/" not in p]
        assert len(heads) == len(rows) + 1  # every file in the first run, the refused one again in the second


def test_without_obstore_an_s3_dest_is_a_config_error_naming_the_extra(monkeypatch):
    from syncer.errors import ConfigError
    from syncer.store.s3 import Location, make_store

    monkeypatch.setitem(sys.modules, "obstore.store", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"syncer\[s3\]"):
        make_store(Location.parse("s3://bkt/p"))


@pytest.mark.parametrize("env", [
    {"AWS_ENDPOINT": "http://example.invalid:9000", "AWS_ALLOW_HTTP": "true"},
    {"AWS_ENDPOINT_URL": "http://10.0.0.5:9000"},
    {"AWS_ENDPOINT_URL": "https://user:pw@s3.example.invalid"},
])
def test_the_environment_cannot_send_the_backup_in_clear(monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    # obstore reads AWS_* variables of its own: they pass the same URL rule as s3.endpoint_url.
    from syncer.config import Location
    from syncer.errors import ConfigError
    from syncer.store.s3 import make_store

    for name in ("AWS_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="s3.endpoint_url"):
        make_store(Location.parse("s3://bucket-a/p"))

