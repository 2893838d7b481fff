"""Every client of the bucket talks to the same store: obstore's and the multipart clean-up's (boto3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from syncer.config import Location, S3Config
from syncer.store import s3, snapshot


@pytest.mark.parametrize("env", [{"AWS_ENDPOINT": "https://minio.clinic.example:9000"},
                                 {"AWS_ENDPOINT_URL": "https://minio.clinic.example:9000"}])
def test_the_clean_up_uses_the_endpoint_obstore_uses(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    boto3 = pytest.importorskip("boto3")
    for name in ("AWS_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: list[str | None] = []

    def client(service: str, *, endpoint_url: str | None, region_name: str) -> object:
        seen.append(endpoint_url)
        raise RuntimeError("no network in this test")  # the clean-up only warns

    monkeypatch.setattr(boto3, "client", client)
    snapshot.abort_stale_uploads(Location("clinic-backup", ""), None, {"user/1"}, datetime.now(UTC))
    assert seen == ["https://minio.clinic.example:9000"] == [s3.endpoint_of(None)]
    assert s3.endpoint_of(S3Config(endpoint_url="https://ceph.example")) == "https://ceph.example"
