"""Optimistic edits conditional on a row's `version`: one implementation for every operator write.

Agents, leases and commands are written concurrently by heartbeats, claims, progress
reports and controllers, each of which bumps `version`. An operator's action or edit
locks the row, compares its version with the one the operator saw, and then writes with
that version in the WHERE clause: the lock makes the check and the write atomic where row
locks exist (PostgreSQL), and the WHERE clause guarantees it where they do not (SQLite).
Call these inside the caller's transaction, which also writes the audit row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Model, Q

from controlplane.common.errors import ConcurrentModificationError


def row_lock(model: type[Model], pk: int, fields: Sequence[str], *, label: str) -> Mapping[str, Any]:
    """Lock the row and read `fields` and `version` (raises model.DoesNotExist)."""
    row = model._default_manager.select_for_update().filter(pk=pk).values("version", *fields).first()
    if row is None:
        raise model.DoesNotExist(f"{label} does not exist")  # type: ignore[attr-defined]
    return row


def version_check(label: str, row: Mapping[str, Any], expected_version: int | None, *, who: str = "") -> None:
    """Raise ConcurrentModificationError unless the locked row still has `expected_version`
    (None: the caller did not load the row, any version will do)."""
    if expected_version is not None and row["version"] != expected_version:
        raise ConcurrentModificationError(
            f"{label} changed concurrently, reload: version {expected_version} was loaded, "
            f"the database has {row['version']}{f' ({who} wrote it)' if who else ''}; nothing was changed"
        )


def lost_race(label: str) -> ConcurrentModificationError:
    """The conditional write matched no row: someone wrote it between the lock and the write."""
    return ConcurrentModificationError(
        f"{label} changed concurrently, reload: it was written while this action ran; nothing was changed"
    )


def versioned_update(
    model: type[Model], pk: int, version: int, condition: Q, values: Mapping[str, Any]
) -> bool:
    """One conditional UPDATE at `version` (and `condition`) that bumps the version."""
    return bool(
        model._default_manager.filter(condition, pk=pk, version=version).update(
            **{**values, "version": F("version") + 1}
        )
    )


@dataclass(frozen=True)
class VersionedEdit:
    """An edit that was written: the row as it was locked, and the values that changed."""

    before: Mapping[str, Any]
    changes: Mapping[str, Any]


def versioned_edit(
    model: type[Model],
    pk: int,
    *,
    changes: Mapping[str, Any],
    expected_version: int,
    editable: Collection[str],
    label: str,
    read: Sequence[str] = (),
    guard: Callable[[Mapping[str, Any], Mapping[str, Any]], Q] | None = None,
    also: Mapping[str, Any] | None = None,
    who: str = "",
) -> VersionedEdit | None:
    """An operator's edit of `changes` (editable fields only) on the row at `expected_version`.

    `guard(row, changes)` raises for an edit the row's state forbids and returns the state
    condition the UPDATE re-checks. Only values that differ from the row are written (a
    form resubmits what it did not change; writing it would bump the version for nothing);
    None when nothing differs. `also` adds values written with the edit (updated_at).
    Raises ValueError for a field that is not editable, ConcurrentModificationError when the
    version moved, model.DoesNotExist.
    """
    unknown = set(changes) - set(editable)
    if unknown:
        raise ValueError(f"not editable by operators: {', '.join(sorted(unknown))}")
    if not changes:
        return None
    row = row_lock(model, pk, [*editable, *read], label=label)
    version_check(label, row, expected_version, who=who)
    condition = guard(row, changes) if guard is not None else Q()
    changed = {field: value for field, value in changes.items() if row[field] != value}
    if not changed:
        return None
    if not versioned_update(model, pk, expected_version, condition, {**changed, **(also or {})}):
        raise lost_race(label)
    return VersionedEdit(before=row, changes=changed)
