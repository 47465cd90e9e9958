"""audit-retention: a dedicated permission, and archive_dir relative to AUDIT_ARCHIVE_ROOT.

archive_dir used to be an absolute path; it is now a folder name under the AUDIT_ARCHIVE_ROOT
setting (design.md §5.5). An absolute archive_dir inside the configured root becomes its
relative form (audited, version bumped). Any other (no root configured, outside the root,
through a symlink) is left as it is and reported here: the config is then invalid and its
runs are refused, so nothing is deleted unarchived until an operator fixes it.
"""

import os

from django.conf import settings
from django.db import migrations
from django.db.models import F
from django.utils import timezone

NAME = "audit-retention"


def _relative_inside_root(value, root):
    """`value` relative to `root`, or None if it leaves it or passes through a symlink."""
    root = os.path.realpath(root)
    candidate = os.path.normpath(value)
    relative = os.path.relpath(candidate, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    path = root
    for part in [] if relative == os.curdir else relative.split(os.sep):
        path = os.path.join(path, part)
        if os.path.islink(path):
            return None
    return relative


def archive_dir_relative(apps, schema_editor):
    ReconcilerConfig = apps.get_model("reconcilers", "ReconcilerConfig")
    AuditLog = apps.get_model("audit", "AuditLog")
    row = ReconcilerConfig.objects.filter(controller=NAME).first()
    if row is None or not isinstance(row.params, dict):
        return
    value = row.params.get("archive_dir")
    if not isinstance(value, str) or not os.path.isabs(value):
        return
    root = settings.AUDIT_ARCHIVE_ROOT
    relative = _relative_inside_root(value, root) if root else None
    if relative is None:
        print(
            f"\n  {NAME}: archive_dir {value!r} is not inside AUDIT_ARCHIVE_ROOT ({root or 'not set'}); "
            "left unchanged, so the config is invalid and its runs are refused until it is fixed"
        )
        return
    before = dict(row.params)
    after = {**before, "archive_dir": relative}
    ReconcilerConfig.objects.filter(pk=row.pk).update(
        params=after, version=F("version") + 1, updated_at=timezone.now()
    )
    AuditLog.objects.create(
        created_at=timezone.now(),
        actor="system:migration",
        action="reconciler.config.updated",
        resource_type="reconciler",
        resource_id=NAME,
        details={"before": {"params": before}, "after": {"params": after}, "changed": ["params"]},
        success=True,
    )
    print(f"\n  {NAME}: archive_dir {value!r} is now {relative!r} (relative to {root})")


class Migration(migrations.Migration):
    dependencies = [
        ("reconcilers", "0007_run_celery_task_id"),
        ("audit", "0001_initial_audit_log"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="reconcilerconfig",
            options={
                "ordering": ["controller"],
                "permissions": [
                    ("change_audit_retention", "Can change audit-retention's config and run it for real")
                ],
                "verbose_name": "reconciler",
            },
        ),
        migrations.RunPython(archive_dir_relative, migrations.RunPython.noop),
    ]
