"""audit-retention: deletes audit logs older than `retention_days`, oldest first, in batches.

Compliance-critical, so it is conservative: a retention below one day is refused at
config time and again at run time (never "delete everything"); each batch is its own
short transaction; with `archive_dir` set, a batch's rows are on disk (fsynced, renamed
into place) before its delete commits. Batches run in id order (the table is
append-only, so that is insertion order) and are deleted by id range; a range is cut
short before any younger row inside it, so rows inserted out of time order are never
deleted early. One `audit.retention.purged` row records each purge; it is not counted
in `items`. Dry runs write no file and delete nothing (the runtime rolls them back).
"""

from __future__ import annotations

import gzip
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from controlplane.audit.models import AuditLog
from controlplane.audit.services import actor_for_controller, audit_record
from reconcilers.runtime.contract import Controller, ControllerParams, ReconcileContext, ReconcileResult

RETENTION_WARN_BELOW_DAYS = 365  # SOC 2 and PCI DSS minimum; HIPAA asks six years
ARCHIVE_FIELDS = ("id", "created_at", "actor", "action", "resource_type", "resource_id", "details", "success")
PURGE_ACTION = "audit.retention.purged"


class RetentionRefusedError(ValueError):
    """The run would delete unsafely (retention below a day, archive folder not writable)."""


class AuditRetentionParams(ControllerParams):
    retention_days: int = Field(365, ge=1, le=36500, description="Audit logs older than this are deleted.")
    batch_size: int = Field(10000, ge=1, le=100_000, description="Rows per delete transaction.")
    archive_dir: str | None = Field(
        None, description="If set, each batch is archived here (gzip JSON lines) before it is deleted."
    )

    @field_validator("archive_dir")
    @classmethod
    def _absolute_folder(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        if not os.path.isabs(value):
            raise ValueError("must be an absolute path (workers do not share a working directory)")
        return value


def archive_file_name(first_id: int, last_id: int) -> str:
    return f"audit-{first_id:012d}-{last_id:012d}.jsonl.gz"


def archive_write(folder: Path, rows: list[dict[str, Any]]) -> str:
    """Write rows to `audit-<first>-<last>.jsonl.gz` atomically and durably; return the name.

    Temporary name, fsync, rename, fsync of the folder: after this returns the file is
    complete on disk under its final name or (after a crash) not there at all.
    """
    name = archive_file_name(rows[0]["id"], rows[-1]["id"])
    temporary = folder / f".{name}.tmp"
    with open(temporary, "wb") as raw:
        with gzip.GzipFile(filename=name, mode="wb", fileobj=raw) as compressed:
            for row in rows:
                line = json.dumps({**row, "created_at": row["created_at"].isoformat()}, sort_keys=True)
                compressed.write(line.encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(temporary, folder / name)
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)
    return name


class AuditRetentionController(Controller):
    name: ClassVar[str] = "audit-retention"
    default_interval_seconds: ClassVar[int] = 86400
    step_names: ClassVar[tuple[str, ...]] = ("deleted",)
    Params: ClassVar[type[ControllerParams]] = AuditRetentionParams

    def reconcile(self, ctx: ReconcileContext) -> ReconcileResult:
        params: AuditRetentionParams = ctx.params
        if params.retention_days < 1:
            # The schema rejects this; a hand-edited row or a caller bypassing it must not
            # turn into "delete everything".
            raise RetentionRefusedError(f"retention_days={params.retention_days} refused: must be >= 1")
        archive = self._archive_folder(params.archive_dir)
        cutoff = ctx.now - timedelta(days=params.retention_days)
        fields = ARCHIVE_FIELDS if archive else ("id", "created_at")

        old_logs = AuditLog.objects.filter(created_at__lt=cutoff)
        deleted, batches, files, ranges = 0, 0, list[str](), list[int]()
        position = 0
        while True:
            young: int | None = None
            with ctx.transaction():
                fetched = list(
                    old_logs.filter(id__gt=position).order_by("id").values(*fields)[: params.batch_size]
                )
                rows = fetched
                if fetched:
                    # Ids follow insertion, not created_at: a younger row inside the id
                    # range (a backdated import) ends the range just before it.
                    young = (
                        AuditLog.objects.filter(
                            id__gt=fetched[0]["id"], id__lt=fetched[-1]["id"], created_at__gte=cutoff
                        )
                        .order_by("id")
                        .values_list("id", flat=True)
                        .first()
                    )
                    if young is not None:
                        rows = [row for row in fetched if row["id"] < young]
                    if archive and not ctx.dry_run:
                        files.append(archive_write(archive, rows))
                    deleted += AuditLog.objects.retention_delete_id_range(rows[0]["id"], rows[-1]["id"])
            if not fetched:
                break
            batches += 1
            ranges.extend((rows[0]["id"], rows[-1]["id"]))  # the DEBUG log shows each range's bounds
            if young is None and len(fetched) < params.batch_size:
                break
            position = young if young is not None else rows[-1]["id"]
        ctx.log_step("deleted", deleted, ranges)

        if deleted:
            with ctx.transaction():
                audit_record(
                    actor=actor_for_controller(self.name),
                    action=PURGE_ACTION,
                    resource_type="audit_log",
                    details={
                        "cutoff": cutoff.isoformat(),
                        "retention_days": params.retention_days,
                        "deleted": deleted,
                        "batches": batches,
                        "archive_files": files,
                    },
                )
        return self.result(deleted=deleted)

    @staticmethod
    def _archive_folder(archive_dir: str | None) -> Path | None:
        if not archive_dir:
            return None
        folder = Path(archive_dir)
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise RetentionRefusedError(
                f"archive_dir {archive_dir!r} is not a writable folder: nothing deleted"
            )
        return folder

    def config_warnings(self, params: ControllerParams) -> list[str]:
        assert isinstance(params, AuditRetentionParams)
        if params.retention_days >= RETENTION_WARN_BELOW_DAYS:
            return []
        return [
            f"retention_days={params.retention_days} is below one year, the minimum of SOC 2 and PCI DSS "
            "(HIPAA asks six years, GDPR two to seven depending on the data)"
        ]
