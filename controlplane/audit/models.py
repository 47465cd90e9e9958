"""The audit log: append-only. Only audit-retention deletes, through `retention_delete_id_range`."""

from __future__ import annotations

from typing import Any

from django.db import connections, models
from django.db.models.sql import DeleteQuery


class AuditLogImmutableError(RuntimeError):
    """Raised when code tries to update or delete audit rows outside audit-retention."""


class AuditLogQuerySet(models.QuerySet["AuditLog"]):
    def update(self, **kwargs: Any) -> int:
        raise AuditLogImmutableError("audit logs are append-only")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditLogImmutableError("audit logs are deleted only by audit-retention")

    def retention_delete_id_range(self, first_id: int, last_id: int) -> int:
        """Delete this queryset's rows with first_id <= id <= last_id in one statement;
        audit-retention only. Returns how many it deleted."""
        # _raw_delete: one DELETE statement, no collector fetching every row first.
        batch = self._id_range(first_id, last_id)
        return int(batch._raw_delete(batch.db))

    def retention_delete_id_range_rows(self, first_id: int, last_id: int) -> list[AuditLog]:
        """`retention_delete_id_range`, returning the deleted rows in id order (DELETE ...
        RETURNING): an archive written from them holds exactly what the statement deleted."""
        batch = self._id_range(first_id, last_id)
        connection = connections[batch.db]
        sql, params = batch.query.chain(DeleteQuery).get_compiler(batch.db).as_sql()
        columns = ", ".join(connection.ops.quote_name(f.column) for f in AuditLog._meta.concrete_fields)
        return sorted(self.raw(f"{sql} RETURNING {columns}", params), key=lambda row: row.pk)

    def _id_range(self, first_id: int, last_id: int) -> AuditLogQuerySet:
        return self.filter(id__gte=first_id, id__lte=last_id)


class AuditLog(models.Model):
    created_at = models.DateTimeField(db_index=True, help_text="When it happened; the retention key.")
    actor = models.CharField(max_length=200, help_text="'user:<username>' or 'system:<controller>'.")
    action = models.CharField(
        max_length=100, db_index=True, help_text="e.g. reconciler.config.updated, token.revoked."
    )
    resource_type = models.CharField(max_length=100, help_text="Kind of object acted on.")
    resource_id = models.CharField(
        max_length=100, blank=True, default="", help_text="Id of the object, as a string."
    )
    details = models.JSONField(
        default=dict, blank=True, help_text="Context; secrets are redacted at any depth."
    )
    success = models.BooleanField(default=True, help_text="Whether the action succeeded.")

    objects = AuditLogQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AuditLogImmutableError("audit logs are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AuditLogImmutableError("audit logs are deleted only by audit-retention")
