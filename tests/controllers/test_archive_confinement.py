"""audit-retention's archive is confined to AUDIT_ARCHIVE_ROOT: refused at save and at run time,
and a planted symlink is never followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.audit import archive
from controlplane.audit.archive import (
    ArchiveLocationError,
    ArchiveUnavailableError,
    archive_file_name,
    archive_writer,
)
from controlplane.audit.models import AuditLog
from controlplane.audit.services import audit_record
from controlplane.common.db import db_now
from reconcilers.controllers.audit_retention import AuditRetentionParams, RetentionRefusedError
from reconcilers.selectors import config_of
from reconcilers.services import ConfigValidationError, config_update
from tests.controllers.conftest import RunController, table_snapshot

NAME = "audit-retention"


@pytest.fixture
def root(settings: Any, tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    settings.AUDIT_ARCHIVE_ROOT = str(folder)
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


def old_logs(count: int) -> None:
    now = db_now()
    for i in range(count):
        audit_record(actor="user:a", action="x", resource_type="t", resource_id=i, at=now.replace(year=2000))


def escapes(root: Path, outside: Path) -> dict[str, str]:
    """Each kind of archive_dir that names a place outside the root."""
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "inner").mkdir()
    (root / "inner" / "loop").symlink_to(root / "inner", target_is_directory=True)
    return {
        "dotdot": "../outside",
        "absolute outside": str(outside),
        "absolute inside": str(root / "inner"),
        "symlink": "link",
        "through symlink": "link/sub",
        "symlink inside the root": "inner/loop",
    }


@pytest.mark.django_db
def test_escaping_archive_dirs_are_refused_at_save(root: Path, outside: Path) -> None:
    config_update(NAME, {"params": {"archive_dir": "ok"}}, actor="user:test")
    before = table_snapshot(AuditLog)
    for label, value in escapes(root, outside).items():
        with pytest.raises(ConfigValidationError) as raised:
            config_update(NAME, {"params": {"archive_dir": value}}, actor="user:test")
        assert raised.value.field == "params.archive_dir", label
    assert config_of(NAME).params.archive_dir == "ok"  # type: ignore[union-attr]
    assert table_snapshot(AuditLog) == before  # no audit row for a refused change


@pytest.mark.django_db
def test_escaping_archive_dirs_are_refused_at_run_time(
    run_controller: RunController, root: Path, outside: Path
) -> None:
    old_logs(3)
    before = table_snapshot(AuditLog)
    for label, value in escapes(root, outside).items():
        # Bypass the schema, as a hand-edited row or a caller skipping it would.
        params = AuditRetentionParams.model_construct(retention_days=1, batch_size=10, archive_dir=value)
        with pytest.raises(RetentionRefusedError, match="archive_dir"):
            run_controller(NAME, params=params)
        assert table_snapshot(AuditLog) == before, label
    assert list(outside.iterdir()) == []


@pytest.mark.django_db
def test_symlink_planted_after_the_save_makes_the_config_invalid(
    run_controller: RunController, root: Path, outside: Path
) -> None:
    (root / "archives").mkdir()
    config_update(NAME, {"params": {"archive_dir": "archives", "retention_days": 1}}, actor="user:test")
    (root / "archives").rmdir()
    (root / "archives").symlink_to(outside, target_is_directory=True)
    config = config_of(NAME)
    assert not config.valid
    assert "symlink" in config.error


@pytest.mark.django_db
def test_archive_dir_without_a_root_is_invalid_and_nothing_is_deleted(
    run_controller: RunController, settings: Any
) -> None:
    settings.AUDIT_ARCHIVE_ROOT = ""
    with pytest.raises(ConfigValidationError, match="AUDIT_ARCHIVE_ROOT"):
        config_update(NAME, {"params": {"archive_dir": "a"}}, actor="user:test")
    old_logs(2)
    before = table_snapshot(AuditLog)
    params = AuditRetentionParams.model_construct(retention_days=1, batch_size=10, archive_dir="a")
    with pytest.raises(RetentionRefusedError, match="AUDIT_ARCHIVE_ROOT"):
        run_controller(NAME, params=params)
    assert table_snapshot(AuditLog) == before


def test_planted_symlink_named_like_the_next_temporary_file_is_never_followed(
    root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = outside / "victim"
    victim.write_bytes(b"precious")
    name = archive_file_name(1, 2)
    suffixes = iter(["planted", "fresh"])
    monkeypatch.setattr(archive, "temporary_suffix", lambda: next(suffixes))
    (root / f".{name}.planted.tmp").symlink_to(victim)
    # The old fixed temporary name as well, in case a writer ever goes back to it.
    (root / f".{name}.tmp").symlink_to(victim)

    assert archive_writer(".").write(name, b"payload") == name

    assert victim.read_bytes() == b"precious"
    assert (root / name).read_bytes() == b"payload"
    assert not (root / name).is_symlink()
    assert (root / f".{name}.planted.tmp").is_symlink()  # left alone, never opened


def test_write_refuses_a_folder_swapped_for_a_symlink_after_the_check(root: Path, outside: Path) -> None:
    (root / "a").mkdir()
    writer = archive_writer("a")
    (root / "a").rmdir()
    (root / "a").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArchiveUnavailableError):
        writer.write(archive_file_name(1, 2), b"payload")
    assert list(outside.iterdir()) == []


def test_no_temporary_file_is_left_behind(root: Path) -> None:
    archive_writer(".").write(archive_file_name(1, 2), b"x")
    assert [p.name for p in root.iterdir()] == [archive_file_name(1, 2)]


def test_location_errors_name_the_problem(root: Path) -> None:
    for value, message in (
        ("../x", r"'\.\.'"),
        ("/abs", "absolute"),
        ("a\x00b", "NUL"),
        ("a\\..\\b", "/"),
    ):
        with pytest.raises(ArchiveLocationError, match=message):
            archive_writer(value)
