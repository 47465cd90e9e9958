"""Where audit archives go, picked by location: a folder of this host (the default for one host,
`archive.LocalFolderArchive`) or object storage, S3 or an S3-compatible server, where every
worker host writes to the same bucket, wherever the purge ran.

A batch is one PUT, which S3 makes visible whole or not at all, sent with its SHA-256 so the
server refuses a body damaged in transit, then read back with a HEAD: `write` returns only
once the stored object has the batch's length and checksum, so the batch's delete may
commit after it (design.md §5.5). Endpoint, region, addressing and the botocore timeouts
and retries come from settings (AUDIT_ARCHIVE_S3_*); credentials from boto3's own chain
(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, an instance or task role), never
from a config row.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from controlplane.audit.archive import ArchiveUnavailableError, ArchiveWriter, archive_writer

S3_SCHEME = "s3://"


def archive_storage(location: str) -> ArchiveWriter:
    """The writer for an `archive_dir`: `s3://bucket[/prefix]` or an absolute folder path,
    checked (reachable, writable) before any row is deleted."""
    if not location.startswith(S3_SCHEME):
        return archive_writer(location)
    writer = S3Archive(location)
    writer.check()
    return writer


def s3_location_problem(location: str) -> str | None:
    """Why `location` is not `s3://bucket[/prefix]`, or None."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        return "expected s3://bucket or s3://bucket/prefix"
    if parts.query or parts.fragment or "@" in parts.netloc:
        return "an s3:// location has a bucket and a prefix only"
    return None


class S3Archive:
    """Objects `<prefix>/<name>` in one bucket; `write` returns `s3://bucket/<key>`."""

    def __init__(self, location: str, client: Any = None) -> None:
        problem = s3_location_problem(location)
        if problem:
            raise ArchiveUnavailableError(f"archive location {location!r}: {problem}")
        parts = urlsplit(location)
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def check(self) -> None:
        """The bucket answers and this identity may use it: before any row is deleted."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # botocore's errors, all of them: the storage cannot take a batch
            raise ArchiveUnavailableError(f"archive bucket {self.bucket!r} unavailable: {exc}") from exc

    def write(self, name: str, payload: bytes) -> str:
        key = self.key(name)
        checksum = base64.b64encode(hashlib.sha256(payload).digest()).decode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=payload,
                ChecksumSHA256=checksum,
                ContentType="application/gzip",
            )
            stored = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise ArchiveUnavailableError(f"archive write of s3://{self.bucket}/{key} failed: {exc}") from exc
        if stored.get("ContentLength") != len(payload) or stored.get("ChecksumSHA256", checksum) != checksum:
            self._remove(key)
            raise ArchiveUnavailableError(
                f"archive write of s3://{self.bucket}/{key} failed: the stored object differs from the batch"
            )
        return f"s3://{self.bucket}/{key}"

    def _remove(self, key: str) -> None:
        """Take away an object that failed its check, so none is left under the batch's name."""
        # The batch is refused either way; a rerun overwrites the same key.
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=self.bucket, Key=key)


def s3_client() -> Any:
    """A boto3 S3 client from the AUDIT_ARCHIVE_S3_* settings, with their timeouts and retries."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=settings.AUDIT_ARCHIVE_S3_CONNECT_TIMEOUT_SECONDS,
        read_timeout=settings.AUDIT_ARCHIVE_S3_READ_TIMEOUT_SECONDS,
        retries={"max_attempts": settings.AUDIT_ARCHIVE_S3_MAX_ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": settings.AUDIT_ARCHIVE_S3_ADDRESSING_STYLE},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.AUDIT_ARCHIVE_S3_ENDPOINT_URL or None,
        region_name=settings.AUDIT_ARCHIVE_S3_REGION or None,
        config=config,
    )
