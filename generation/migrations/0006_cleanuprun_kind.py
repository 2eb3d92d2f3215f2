from django.db import migrations, models


def mark_undo_runs(apps, schema_editor):
    # Until now an undo run was told apart by the "undo" key of its filters.
    CleanupRun = apps.get_model("generation", "CleanupRun")
    CleanupRun.objects.filter(filters__has_key="undo").update(kind="undo")


class Migration(migrations.Migration):
    dependencies = [("generation", "0005_demo_rows")]

    operations = [
        migrations.AddField(
            model_name="cleanuprun",
            name="kind",
            field=models.CharField(choices=[("cleanup", "cleanup"), ("undo", "undo")], db_default="cleanup",
                                   max_length=10),
        ),
        migrations.RunPython(mark_undo_runs, migrations.RunPython.noop),
    ]
