"""audit-retention: deletes audit logs older than `retention_days`, oldest first, in batches (design.md §5.5).

Compliance-critical, so it is conservative: a retention below one day is refused at config
time and again at run time (never "delete everything"); each batch is its own short
transaction; with `archive_dir` set, a batch's rows are on disk (fsynced, renamed into
place) or in object storage (written, then read back) before its delete commits, and the
archive is written from the rows the DELETE returned, so it holds exactly what was
deleted. Batches run in id order (the table is append-only, so that is insertion order)
and are deleted by id range; the DELETE re-checks the age of every row in the range, so a
row inserted out of time order is never deleted early. Each batch writes one
`audit.retention.purged` row (its id range, how many rows it deleted, its archive file) in
its own transaction, so every deleted id lies in exactly one record's range even when the
run is cut short; those rows are not counted in `items`. Dry runs write no file and delete
nothing (the runtime rolls them back).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from django.db.models import Count, Max, Min, QuerySet
from pydantic import Field, field_validator

from controlplane.audit.archive import (
    ArchiveLocationError,
    ArchiveUnavailableError,
    ArchiveWriter,
    archive_file_name,
    archive_folder_check,
    archive_payload,
)
from controlplane.audit.archive_storage import archive_storage, s3_location_problem
from controlplane.audit.models import AuditLog, AuditLogQuerySet
from controlplane.audit.redaction import redact_secrets
from controlplane.audit.services import audit_record
from controlplane.common.actors import actor_for_controller
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
        None,
        description="If set, each batch is archived (gzip JSON lines) before it is deleted: a folder "
        "relative to the AUDIT_ARCHIVE_ROOT setting (no '..', no symlinks; '.' is the root itself), or "
        "s3://bucket/prefix (object storage, shared by every worker host).",
    )

    @field_validator("archive_dir")
    @classmethod
    def _folder_under_root(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if "\x00" in value:
            raise ValueError("must not contain a NUL character")
        if value.lower().startswith("s3:"):  # "s3:bucket" is a mistyped location, not a folder name
            problem = s3_location_problem(value)
            if problem:
                raise ValueError(problem)
            return value
        if "://" in value:
            raise ValueError("object storage must be s3://bucket or s3://bucket/prefix")
        try:
            # Checked on every read of the config, so a symlink planted after the save
            # makes the config invalid (runs refused) as well as failing the writer.
            archive_folder_check(value)
        except ArchiveLocationError as exc:
            raise ValueError(str(exc)) from None
        return value


@dataclass(frozen=True)
class Span:
    """One batch: delete ids first..last (all old); `last_batch` when nothing old follows."""

    first: int
    last: int
    last_batch: bool


def _archived(row: AuditLog) -> dict[str, Any]:
    """A row as the archive keeps it. Its details pass the redaction again: rows written before
    a redaction rule existed are not rewritten in the table, but their archive holds no secret."""
    archived = {name: getattr(row, name) for name in ARCHIVE_FIELDS}
    archived["details"] = redact_secrets(archived["details"])
    return archived


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
        try:
            archive = archive_storage(params.archive_dir) if params.archive_dir else None
        except ArchiveLocationError as exc:
            raise RetentionRefusedError(f"archive_dir {exc}: nothing deleted") from exc
        except ArchiveUnavailableError as exc:
            raise RetentionRefusedError(f"{exc}: nothing deleted") from exc
        cutoff = ctx.now - timedelta(days=params.retention_days)

        old_logs = AuditLog.objects.filter(created_at__lt=cutoff)
        actor = actor_for_controller(self.name)
        deleted, ranges = 0, list[int]()
        position = 0
        while True:
            with ctx.transaction():
                span = self._next_span(old_logs, position, params.batch_size)
                if span is None:
                    break
                count, archive_file = self._purge(old_logs, span, archive if not ctx.dry_run else None)
                if count:
                    # In the batch's own transaction: a committed batch always has its record,
                    # whatever stops the run after it (design.md §5.5).
                    audit_record(
                        actor=actor,
                        action=PURGE_ACTION,
                        resource_type="audit_log",
                        details={
                            "cutoff": cutoff.isoformat(),
                            "retention_days": params.retention_days,
                            "first_id": span.first,
                            "last_id": span.last,
                            "deleted": count,
                            "archive_file": archive_file,
                        },
                    )
                    ctx.tally("deleted", count)
            deleted += count
            ranges.extend((span.first, span.last))  # the DEBUG log shows each range's bounds
            if span.last_batch:
                break
            position = span.last
        ctx.log_step("deleted", deleted, ranges)
        return self.result(deleted=deleted)

    @staticmethod
    def _purge(
        old_logs: AuditLogQuerySet, span: Span, archive: ArchiveWriter | None
    ) -> tuple[int, str | None]:
        """Delete the old rows of one id range; with an archive folder, write exactly the rows
        the DELETE returned before the transaction commits (a failed write rolls it back).
        A range a newer lock holder already emptied deletes nothing and writes no file."""
        if archive is None:
            return old_logs.retention_delete_id_range(span.first, span.last), None
        rows = old_logs.retention_delete_id_range_rows(span.first, span.last)
        if not rows:
            return 0, None
        name = archive_file_name(rows[0].pk, rows[-1].pk)
        return len(rows), archive.write(name, archive_payload(_archived(row) for row in rows))

    @staticmethod
    def _next_span(old_logs: QuerySet[AuditLog], position: int, size: int) -> Span | None:
        """The id range of the next `size` old rows after `position`: one small query that
        returns bounds, never the rows themselves."""
        page = old_logs.filter(id__gt=position).order_by("id").values("id")[:size]
        bounds = page.aggregate(first=Min("id"), last=Max("id"), count=Count("id"))
        if not bounds["count"]:
            return None
        return Span(first=bounds["first"], last=bounds["last"], last_batch=bounds["count"] < size)

    def config_warnings(self, params: ControllerParams) -> list[str]:
        assert isinstance(params, AuditRetentionParams)
        if params.retention_days >= RETENTION_WARN_BELOW_DAYS:
            return []
        return [
            f"retention_days={params.retention_days} is below one year, the minimum of SOC 2 and PCI DSS "
            "(HIPAA asks six years, GDPR two to seven depending on the data)"
        ]
