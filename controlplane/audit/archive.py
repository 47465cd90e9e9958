"""Where audit-retention puts the rows it deletes: one archive interface, its writers chosen here.

A writer stores one batch under a name and returns only once the object is complete and
durable, so the batch's delete may commit after it (design.md §5.5). The local folder
writer is the default for a single host; other writers (object storage) implement the
same `ArchiveWriter` protocol and are picked by `archive_writer`.

Local archives are confined: `archive_dir` is a folder name relative to the
AUDIT_ARCHIVE_ROOT setting, never a path an admin user can point at any file the worker
can write (design.md §5.5).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings

TEMPORARY_NAME_ATTEMPTS = 5  # a collision with 64 random bits means something planted it


class ArchiveUnavailableError(RuntimeError):
    """The archive cannot take a batch (missing folder, not writable, storage down): the
    batch is refused and nothing is deleted."""


class ArchiveLocationError(ValueError):
    """An `archive_dir` that is not a folder name confined to the archive root (absolute,
    `..`, through a symlink, or no root configured)."""


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


def archive_dir_parts(archive_dir: str) -> tuple[str, ...]:
    """The folder names of `archive_dir` below the root ("." is the root itself).

    Raises ArchiveLocationError for anything that could name a place outside the root
    whatever the filesystem holds: an absolute path, a `..` part, a NUL or a backslash."""
    if "\x00" in archive_dir:
        raise ArchiveLocationError("must not contain a NUL character")
    if os.path.isabs(archive_dir):
        raise ArchiveLocationError(
            "must be a folder name relative to AUDIT_ARCHIVE_ROOT, not an absolute path"
        )
    if "\\" in archive_dir:
        raise ArchiveLocationError("must use / between folder names")
    parts = tuple(part for part in archive_dir.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveLocationError("must not contain '..' (it is confined to AUDIT_ARCHIVE_ROOT)")
    return parts


def archive_root() -> Path:
    """The configured archive root, resolved; ArchiveLocationError when none is configured."""
    root = settings.AUDIT_ARCHIVE_ROOT
    if not root:
        raise ArchiveLocationError("is set but AUDIT_ARCHIVE_ROOT is not configured (nothing is deleted)")
    return Path(os.path.realpath(root))


def archive_folder_check(archive_dir: str) -> Path:
    """The folder `archive_dir` names under the root, refused (ArchiveLocationError) if it
    leaves the root or passes through a symlink. Parts that do not exist yet are accepted:
    whether the folder exists and is writable is the run's question (ArchiveUnavailableError)."""
    parts = archive_dir_parts(archive_dir)
    root = archive_root()
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ArchiveLocationError(f"must not pass through a symlink ({part!r} is one)")
    resolved = Path(os.path.realpath(path))
    if resolved != root and root not in resolved.parents:
        raise ArchiveLocationError("leaves AUDIT_ARCHIVE_ROOT")
    return path


class LocalFolderArchive:
    """Files in one folder under the archive root of this host.

    The folder is opened one part at a time from the root with O_NOFOLLOW, so a symlink
    planted anywhere on the way (even after the config was saved) is refused, and every
    later step works relative to that open folder, so swapping a folder for a symlink in
    the meantime changes nothing. Each file is created under a fresh random temporary name
    with O_CREAT|O_EXCL|O_NOFOLLOW (a file or symlink already there is never opened or
    followed), fsynced, renamed into place and the folder fsynced: after `write` returns
    the file is complete under its final name, or (after a crash) not there at all.
    """

    def __init__(self, root: Path, parts: tuple[str, ...]) -> None:
        self.root = root
        self.parts = parts
        self.folder = root.joinpath(*parts)

    def _open_folder(self) -> int:
        """A descriptor of the folder, reached without following any symlink below the root."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in self.parts:
                next_fd = os.open(part, flags, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check(self) -> None:
        try:
            fd = self._open_folder()
        except OSError as exc:
            # ELOOP/ENOTDIR: a symlink or a file where a folder should be.
            raise ArchiveUnavailableError(
                f"archive folder {str(self.folder)!r} is not a folder reachable without symlinks: "
                f"{exc.strerror}"
            ) from exc
        os.close(fd)
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ArchiveUnavailableError(f"archive folder {str(self.folder)!r} is not writable")

    def write(self, name: str, payload: bytes) -> str:
        if "/" in name or name in ("", ".", ".."):
            raise ArchiveUnavailableError(f"archive file name {name!r} is not a plain file name")
        try:
            folder_fd = self._open_folder()
        except OSError as exc:
            raise ArchiveUnavailableError(f"archive write of {name} failed: {exc}") from exc
        try:
            temporary = self._create_temporary(folder_fd, name)
            try:
                self._fill(folder_fd, temporary, payload)
                os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=folder_fd)
                raise
            os.fsync(folder_fd)
        except OSError as exc:
            raise ArchiveUnavailableError(f"archive write of {name} failed: {exc}") from exc
        finally:
            os.close(folder_fd)
        return name

    @staticmethod
    def _create_temporary(folder_fd: int, name: str) -> str:
        """Create (exclusively) and return a new temporary file name in the folder."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        for _ in range(TEMPORARY_NAME_ATTEMPTS):
            temporary = f".{name}.{temporary_suffix()}.tmp"
            try:
                os.close(os.open(temporary, flags, 0o600, dir_fd=folder_fd))
            except FileExistsError:
                continue  # something already has this name: never open it, take another
            return temporary
        raise ArchiveUnavailableError(f"archive write of {name}: no free temporary name")

    @staticmethod
    def _fill(folder_fd: int, temporary: str, payload: bytes) -> None:
        fd = os.open(temporary, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
        with os.fdopen(fd, "wb") as raw:
            raw.write(payload)
            raw.flush()
            os.fsync(raw.fileno())


def temporary_suffix() -> str:
    """Random, so a name cannot be predicted and planted in advance."""
    return secrets.token_hex(8)


def archive_writer(archive_dir: str) -> LocalFolderArchive:
    """The writer for a configured `archive_dir` (relative to AUDIT_ARCHIVE_ROOT), checked
    before any row is deleted: ArchiveLocationError if it is not confined to the root,
    ArchiveUnavailableError if it is not a writable folder."""
    archive_folder_check(archive_dir)
    writer = LocalFolderArchive(archive_root(), archive_dir_parts(archive_dir))
    writer.check()
    return writer
