"""audit-retention archiving to object storage: a real S3-compatible server (moto's
ThreadedMotoServer, started here on a loopback port), written and verified before each
batch's delete commits; an outage refuses the batch and deletes nothing unarchived."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer

from controlplane.audit.archive import ArchiveUnavailableError
from controlplane.audit.archive_storage import S3Archive, archive_storage
from controlplane.audit.models import AuditLog
from controlplane.common.db import db_now
from reconcilers.controllers.audit_retention import PURGE_ACTION
from reconcilers.services import config_update, run_controller
from tests.pgbouncer import free_port

BUCKET = "cp-audit-archive"
PREFIX = "prod/audit"
ARCHIVE = f"s3://{BUCKET}/{PREFIX}"


@pytest.fixture
def s3(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMotoServer]:
    """A fresh S3-compatible server with one bucket; short botocore timeouts and one retry, so
    an outage is refused in seconds."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings.AUDIT_ARCHIVE_S3_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    settings.AUDIT_ARCHIVE_S3_REGION = "us-east-1"
    settings.AUDIT_ARCHIVE_S3_ADDRESSING_STYLE = "path"
    settings.AUDIT_ARCHIVE_S3_CONNECT_TIMEOUT_SECONDS = 1.0
    settings.AUDIT_ARCHIVE_S3_READ_TIMEOUT_SECONDS = 2.0
    settings.AUDIT_ARCHIVE_S3_MAX_ATTEMPTS = 2
    _client(settings).create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()
        s3_backends.reset()  # moto keeps its state in this process: the next test starts empty


def _client(settings: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.AUDIT_ARCHIVE_S3_ENDPOINT_URL,
        region_name="us-east-1",
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )


def _archived_rows(settings: Any) -> dict[int, dict[str, Any]]:
    """Every row in every archived object, by id (an id twice would be a bug here)."""
    client = _client(settings)
    rows: dict[int, dict[str, Any]] = {}
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    for item in listing.get("Contents", []):
        body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        for line in gzip.decompress(body).splitlines():
            row = json.loads(line)
            assert row["id"] not in rows
            rows[row["id"]] = row
    return rows


def _old_rows(count: int, *, days: int = 400) -> list[int]:
    created = db_now() - timedelta(days=days)
    logs = AuditLog.objects.bulk_create(
        AuditLog(
            created_at=created + timedelta(seconds=i),
            actor="user:alice",
            action="agent.revoked",
            resource_type="agent",
            resource_id=str(i),
            details={"n": i},
        )
        for i in range(count)
    )
    return [log.pk for log in logs]


def _as_archived(pk: int) -> dict[str, Any]:
    log = AuditLog.objects.get(pk=pk)
    return {
        "id": log.pk,
        "created_at": log.created_at.isoformat(),
        "actor": log.actor,
        "action": log.action,
        "resource_type": log.resource_type,
        "resource_id": log.resource_id,
        "details": log.details,
        "success": log.success,
    }


@pytest.mark.django_db(transaction=True)
def test_archived_objects_equal_the_deleted_rows(s3: ThreadedMotoServer, settings: Any) -> None:
    old = _old_rows(250)
    young = _old_rows(20, days=10)
    expected = {pk: _as_archived(pk) for pk in old}
    config_update("audit-retention", {"params": {"batch_size": 100, "archive_dir": ARCHIVE}}, actor="user:t")

    summary = run_controller("audit-retention", force=True)

    assert summary.outcome == "success", summary.error_text
    assert summary.items == 250
    assert _archived_rows(settings) == expected  # exactly the deleted rows, field for field
    assert set(AuditLog.objects.filter(pk__in=old + young).values_list("pk", flat=True)) == set(young)
    purges = AuditLog.objects.filter(action=PURGE_ACTION).order_by("pk")
    assert [p.details["archive_file"] for p in purges] == [
        f"{ARCHIVE}/audit-{first:012d}-{last:012d}.jsonl.gz"
        for first, last in ((old[0], old[99]), (old[100], old[199]), (old[200], old[249]))
    ]


@pytest.mark.django_db(transaction=True)
def test_a_storage_outage_mid_purge_deletes_nothing_unarchived(
    s3: ThreadedMotoServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _old_rows(300)
    config_update("audit-retention", {"params": {"batch_size": 100, "archive_dir": ARCHIVE}}, actor="user:t")
    write = S3Archive.write

    def write_then_fail(self: S3Archive, name: str, payload: bytes) -> str:
        """The storage goes away right after the first batch's object is stored."""
        location = write(self, name, payload)
        s3.stop()
        return location

    monkeypatch.setattr(S3Archive, "write", write_then_fail)

    summary = run_controller("audit-retention", force=True)

    assert summary.outcome == "error"
    assert "archive write" in summary.error_text
    s3.start()  # the same process keeps moto's state: read back what reached the storage
    archived = _archived_rows(settings)
    remaining = set(AuditLog.objects.filter(pk__in=old).values_list("pk", flat=True))
    deleted = set(old) - remaining
    assert deleted == set(old[:100])  # the first batch only: its object was verified first
    assert set(archived) == deleted  # nothing deleted that is not archived


@pytest.mark.django_db
def test_an_unreachable_bucket_is_refused_before_anything_is_deleted(s3: ThreadedMotoServer) -> None:
    with pytest.raises(ArchiveUnavailableError, match="no-such-bucket"):
        archive_storage("s3://no-such-bucket/x")
    s3.stop()
    with pytest.raises(ArchiveUnavailableError, match=BUCKET):
        archive_storage(ARCHIVE)
    s3.start()


@pytest.mark.parametrize(
    "location",
    [
        "s3://",
        "s3:///prefix",
        "s3://bucket?x=1",
        "s3://user@bucket/p",
        "s3:bucket",
        "S3:/bucket",
        "gs://bucket",
    ],
)
def test_a_malformed_s3_location_is_refused_by_the_schema(location: str) -> None:
    from reconcilers.controllers.audit_retention import AuditRetentionParams

    with pytest.raises(ValueError, match="archive_dir"):
        AuditRetentionParams(archive_dir=location)
