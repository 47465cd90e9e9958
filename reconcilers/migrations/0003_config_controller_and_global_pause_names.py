"""Names only: ReconcilerConfig.name becomes `controller`, RuntimeSwitch becomes GlobalPause.

The table and column keep their names, so no data moves. The four model permissions of
the pause switch are renamed with it, so a group or user that could change the pause
before the upgrade still can after it.
"""

from django.db import migrations, models

OLD, NEW = "runtimeswitch", "globalpause"


def permissions_rename(apps, schema_editor, old=OLD, new=NEW, label="global pause"):
    Permission = apps.get_model("auth", "Permission")
    for action in ("add", "change", "delete", "view"):
        Permission.objects.filter(content_type__app_label="reconcilers", codename=f"{action}_{old}").update(
            codename=f"{action}_{new}", name=f"Can {action} {label}"
        )


def permissions_restore(apps, schema_editor):
    permissions_rename(apps, schema_editor, old=NEW, new=OLD, label="runtime switch")


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("reconcilers", "0002_state_database_lease_lock"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameField("reconcilerconfig", "name", "controller"),
                migrations.AlterField(
                    model_name="reconcilerconfig",
                    name="controller",
                    field=models.CharField(
                        db_column="name",
                        help_text="Controller name, e.g. agent-health.",
                        max_length=64,
                        unique=True,
                    ),
                ),
            ],
        ),
        migrations.AlterModelOptions(
            name="reconcilerconfig", options={"ordering": ["controller"], "verbose_name": "reconciler"}
        ),
        # The table name is pinned first, so the rename below changes no table.
        migrations.AlterModelTable(name="runtimeswitch", table="reconcilers_runtimeswitch"),
        migrations.RenameModel("RuntimeSwitch", "GlobalPause"),
        migrations.AlterModelOptions(
            name="globalpause",
            options={"verbose_name": "global pause", "verbose_name_plural": "global pause"},
        ),
        migrations.RunPython(permissions_rename, permissions_restore),
    ]
