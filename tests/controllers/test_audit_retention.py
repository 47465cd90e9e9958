"""audit-retention: batched oldest-first deletes, archive before commit, meta-audit, refusals."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controlplane.audit.archive import archive_file_name
from controlplane.audit.models import AuditLog
from controlplane.audit.services import audit_record
from controlplane.common.db import db_now
from reconcilers.controllers.audit_retention import PURGE_ACTION, AuditRetentionParams, RetentionRefusedError
from reconcilers.registry import controller_get
from reconcilers.runtime.context import reconcile_in_context
from reconcilers.runtime.contract import LockLostError
from reconcilers.runtime.fencing import fence_grant
from tests.controllers.conftest import RunController, count_queries, run_context, table_snapshot

NAME = "audit-retention"


@pytest.fixture(autouse=True)
def archive_root(settings: Any, tmp_path: Path) -> Path:
    """Archives go under the test's own folder: archive_dir "." is tmp_path itself."""
    settings.AUDIT_ARCHIVE_ROOT = str(tmp_path)
    return tmp_path


def logs(now: datetime, ages_days: list[float]) -> list[int]:
    """Audit rows created `ages_days` ago, in that (id) order."""
    return [
        audit_record(
            actor="user:alice",
            action="token.revoked",
            resource_type="token",
            resource_id=i,
            details={"n": i},
            at=now - timedelta(days=age),
        ).pk
        for i, age in enumerate(ages_days)
    ]


def remaining(exclude_meta: bool = True) -> list[int]:
    rows = AuditLog.objects.order_by("id")
    if exclude_meta:
        rows = rows.exclude(action=PURGE_ACTION)
    return list(rows.values_list("id", flat=True))


def archived_ids(folder: Path) -> list[int]:
    found: list[int] = []
    for path in sorted(folder.glob("audit-*.jsonl.gz")):
        with gzip.open(path, "rt") as lines:
            found.extend(json.loads(line)["id"] for line in lines)
    return found


def purge_records() -> list[dict[str, Any]]:
    """The meta-audit records of the purges, oldest first."""
    return [row.details for row in AuditLog.objects.filter(action=PURGE_ACTION).order_by("pk")]


@pytest.mark.django_db
def test_deletes_only_rows_older_than_retention_and_records_one_purge(run_controller: RunController) -> None:
    now = db_now()
    old = logs(now, [400, 366, 365.0001])
    young = logs(now, [365, 364, 0])  # exactly at the cutoff is not older

    result = run_controller(NAME, now=now)

    assert result.steps == {"deleted": 3}
    assert result.items == 3  # the meta-audit row is not counted
    assert remaining() == young
    meta = AuditLog.objects.get(action=PURGE_ACTION)  # one per batch
    assert meta.actor == "system:audit-retention"
    assert meta.details == {
        "cutoff": (now - timedelta(days=365)).isoformat(),
        "retention_days": 365,
        "first_id": old[0],
        "last_id": old[-1],
        "deleted": 3,
        "archive_file": None,
    }
    assert not AuditLog.objects.filter(pk__in=old).exists()


@pytest.mark.django_db
def test_batches_are_bounded_and_each_is_one_delete(run_controller: RunController) -> None:
    now = db_now()
    logs(now, [500] * 25)
    keep = logs(now, [1])
    ctx = run_context(NAME, now=now, batch_size=10)
    _, sql = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
    deletes = [s for s in sql if s.lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3  # 10 + 10 + 5
    assert remaining() == keep
    assert [meta["deleted"] for meta in purge_records()] == [10, 10, 5]


@pytest.mark.django_db
def test_each_batch_commits_on_its_own_and_archive_precedes_the_delete(tmp_path: Path) -> None:
    """Lose the lock during batch 3: batches 1-2 stay deleted (committed on their own), batch 3
    is rolled back, and its archive file is already on disk (written before the delete
    commits) while its rows are still present: archived twice at worst, never lost."""
    now = db_now()
    ids = logs(now, [500] * 30)
    ctx = run_context(NAME, now=now, batch_size=10, archive_dir=".")
    batches_started = 0
    real_checkpoint = ctx.checkpoint

    def checkpoint() -> None:
        nonlocal batches_started
        batches_started += 1
        if batches_started == 3:
            fence_grant(NAME, "newer holder")  # batch 3 runs, then fails its fence check
        real_checkpoint()

    ctx.checkpoint = checkpoint  # type: ignore[method-assign]
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), ctx)

    assert remaining() == ids[20:]
    # The committed batches have their records (written in their transactions); batch 3 has none.
    assert [(m["first_id"], m["last_id"], m["deleted"]) for m in purge_records()] == [
        (ids[0], ids[9], 10),
        (ids[10], ids[19], 10),
    ]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [archive_file_name(ids[i], ids[i + 9]) for i in (0, 10, 20)]
    assert archived_ids(tmp_path) == ids


@pytest.mark.django_db
def test_archive_holds_exactly_the_deleted_rows(run_controller: RunController, tmp_path: Path) -> None:
    now = db_now()
    old = logs(now, [900 - i for i in range(23)])
    logs(now, [10, 5])
    before = {row["id"]: row for row in AuditLog.objects.filter(pk__in=old).values()}

    result = run_controller(NAME, now=now, batch_size=10, archive_dir=".")

    assert result.steps == {"deleted": 23}
    assert archived_ids(tmp_path) == old
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        archive_file_name(old[0], old[9]),
        archive_file_name(old[10], old[19]),
        archive_file_name(old[20], old[22]),
    ]
    with gzip.open(tmp_path / files[0], "rt") as lines:
        first = json.loads(lines.readline())
    original = before[first["id"]]
    assert first == {**original, "created_at": original["created_at"].isoformat()}
    records = purge_records()
    assert [meta["archive_file"] for meta in records] == files
    assert sum(meta["deleted"] for meta in records) == 23


@pytest.mark.django_db
def test_dry_run_deletes_nothing_writes_no_file_and_reports_the_count(
    run_controller: RunController, tmp_path: Path
) -> None:
    now = db_now()
    logs(now, [800] * 12 + [2])
    before = table_snapshot(AuditLog)
    dry = run_controller(NAME, now=now, dry_run=True, batch_size=5, archive_dir=".")
    assert table_snapshot(AuditLog) == before  # not even the meta-audit row survives
    assert list(tmp_path.iterdir()) == []
    real = run_controller(NAME, now=now, batch_size=5, archive_dir=".")
    assert dry.steps == real.steps == {"deleted": 12}
    assert len(list(tmp_path.iterdir())) == 3


@pytest.mark.django_db
def test_second_run_changes_nothing(run_controller: RunController) -> None:
    now = db_now()
    logs(now, [700, 600, 3])
    assert run_controller(NAME, now=now).items == 2
    before = table_snapshot(AuditLog)
    assert run_controller(NAME, now=now).items == 0
    assert table_snapshot(AuditLog) == before  # no purge, so no second meta-audit row


@pytest.mark.django_db
def test_a_younger_row_inside_an_id_range_is_never_deleted(run_controller: RunController) -> None:
    now = db_now()
    ids = logs(now, [500, 500, 1, 500, 500, 2, 500])  # old rows inserted after young ones
    # One batch of the 5 old rows: the range 0..6 holds both young rows.
    assert run_controller(NAME, now=now, batch_size=10).steps == {"deleted": 5}
    assert remaining() == [ids[2], ids[5]]
    # The record's range holds the young rows too: its count, not its range, says what went.
    assert [(m["first_id"], m["last_id"], m["deleted"]) for m in purge_records()] == [(ids[0], ids[6], 5)]


@pytest.mark.django_db
def test_retention_below_one_day_refused_at_config_and_at_run_time(run_controller: RunController) -> None:
    for bad in (0, -1, -365, 36501):
        with pytest.raises(ValidationError, match="retention_days"):
            AuditRetentionParams.model_validate({"retention_days": bad})
    now = db_now()
    logs(now, [5000, 1])
    before = table_snapshot(AuditLog)
    for bad in (0, -1):
        unchecked = AuditRetentionParams.model_construct(retention_days=bad, batch_size=10, archive_dir=None)
        with pytest.raises(RetentionRefusedError, match="retention_days"):
            run_controller(NAME, now=now, params=unchecked)
    assert table_snapshot(AuditLog) == before


@pytest.mark.django_db
def test_unwritable_archive_dir_is_refused_at_run_time(run_controller: RunController, tmp_path: Path) -> None:
    now = db_now()
    logs(now, [5000])
    before = table_snapshot(AuditLog)
    with pytest.raises(RetentionRefusedError, match="archive_dir"):
        run_controller(NAME, now=now, archive_dir="missing")
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(RetentionRefusedError, match="archive_dir"):
        run_controller(NAME, now=now, archive_dir="file")
    assert table_snapshot(AuditLog) == before


@pytest.mark.django_db
def test_stale_fence_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    now = db_now()
    logs(now, [5000, 4000])
    stale = run_context(NAME, now=now)
    fence_grant(NAME, "newer holder")
    before = table_snapshot(AuditLog)
    with pytest.raises(LockLostError):
        reconcile_in_context(controller_get(NAME), stale)
    assert table_snapshot(AuditLog) == before


@pytest.mark.django_db
def test_query_count_does_not_grow_with_rows() -> None:
    def measure(count: int, batch_size: int = 1000) -> int:
        now = db_now()
        logs(now, [400] * count)
        ctx = run_context(NAME, now=now, batch_size=batch_size)
        queries, _ = count_queries(lambda: reconcile_in_context(controller_get(NAME), ctx))
        assert remaining() == []
        return queries

    small, large = measure(3), measure(120)
    assert small == large, (small, large)
    one_batch, four_batches = measure(40, batch_size=40), measure(160, batch_size=40)
    assert four_batches > one_batch  # grows per batch, never per row


def test_params_and_warnings() -> None:
    params = AuditRetentionParams()
    assert (params.retention_days, params.batch_size, params.archive_dir) == (365, 10000, None)
    for field, value in (("batch_size", 0), ("batch_size", 100_001), ("archive_dir", "/srv/a")):
        with pytest.raises(ValidationError, match=field):
            AuditRetentionParams.model_validate({field: value})
    AuditRetentionParams.model_validate({"retention_days": 1, "batch_size": 100_000, "archive_dir": "a/b"})
    controller = controller_get(NAME)
    assert controller.config_warnings(AuditRetentionParams()) == []
    warnings: Any = controller.config_warnings(AuditRetentionParams(retention_days=364))
    assert "below one year" in warnings[0]
