"""Where audit-retention puts the rows it deletes: one archive interface, its writers chosen here.

A writer stores one batch under a name and returns only once the object is complete and
durable, so the batch's delete may commit after it (design.md §5.5). The local folder
writer is the default for a single host; other writers (object storage) implement the
same `ArchiveWriter` protocol and are picked by `archive_writer`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol


class ArchiveUnavailableError(RuntimeError):
    """The archive cannot take a batch (missing folder, not writable, storage down): the
    batch is refused and nothing is deleted."""


class ArchiveWriter(Protocol):
    def write(self, name: str, payload: bytes) -> str:
        """Store `payload` under `name`, durably; return where it went (recorded in the
        meta-audit). Raises ArchiveUnavailableError, leaving no partial object under `name`."""
        ...


def archive_file_name(first_id: int, last_id: int) -> str:
    return f"audit-{first_id:012d}-{last_id:012d}.jsonl.gz"


def archive_payload(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """Rows as gzip JSON lines, one object per row with sorted keys, times in ISO 8601."""
    buffer = io.BytesIO()
    with gzip.GzipFile(mode="wb", fileobj=buffer, mtime=0) as compressed:
        for row in rows:
            line = json.dumps({**row, "created_at": row["created_at"].isoformat()}, sort_keys=True)
            compressed.write(line.encode() + b"\n")
    return buffer.getvalue()


class LocalFolderArchive:
    """Files in one folder of this host: temporary name, fsync, rename, fsync of the folder, so
    after `write` returns the file is complete under its final name, or (after a crash) not
    there at all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def check(self) -> None:
        if not self.folder.is_dir() or not os.access(self.folder, os.W_OK | os.X_OK):
            raise ArchiveUnavailableError(f"archive folder {str(self.folder)!r} is not a writable folder")

    def write(self, name: str, payload: bytes) -> str:
        temporary = self.folder / f".{name}.tmp"
        try:
            with open(temporary, "wb") as raw:
                raw.write(payload)
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(temporary, self.folder / name)
            folder_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        except OSError as exc:
            raise ArchiveUnavailableError(f"archive write of {name} failed: {exc}") from exc
        return name


def archive_writer(archive_dir: str) -> LocalFolderArchive:
    """The writer for a configured `archive_dir`, checked before any row is deleted."""
    writer = LocalFolderArchive(Path(archive_dir))
    writer.check()
    return writer
