# How many batches were stuck when each job run started, for the health page's backlog chart. Runs recorded
# before this have no such figure: a job run over the whole table gets what it examined (its repaired, stalled
# and corrupt batches; the few that moved on or were busy were not recorded then).

from django.db import migrations, models

CHUNK = 2_000


def backfill(apps, schema_editor):
    CleanupRun = apps.get_model("generation", "CleanupRun")
    runs = CleanupRun.objects.filter(kind="cleanup", trigger__in=("cron", "command"), dry_run=False,
                                     outcome__in=("ok", "errors"))
    chunk = []
    for run in runs.only("pk", "examined", "filters").iterator(chunk_size=CHUNK):
        filters = run.filters or {}
        if filters.get("only") == "locks" or filters.get("accounts") or filters.get("content_types"):
            continue
        run.stuck_found = run.examined
        chunk.append(run)
        if len(chunk) == CHUNK:
            CleanupRun.objects.bulk_update(chunk, ["stuck_found"])
            chunk = []
    CleanupRun.objects.bulk_update(chunk, ["stuck_found"])


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0007_cleanuprun_windows_by_type'),
    ]

    operations = [
        migrations.AddField(
            model_name='cleanuprun',
            name='stuck_found',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
