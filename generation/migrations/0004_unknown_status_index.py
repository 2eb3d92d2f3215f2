# A partial index for the cleanup's check of statuses the contract does not name (reported as
# errors, never repaired). It is empty while the backend writes only known statuses, so it costs the
# backend next to nothing, and its predicate involves only `status`, which 0003's index already
# involves (no HOT update is lost). Built CONCURRENTLY on PostgreSQL, with 0003's operation.

import importlib

from django.db import migrations, models

AddIndexConcurrentlyOnPostgres = importlib.import_module(
    "generation.migrations.0003_cleanup_scan_indexes").AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('generation', '0003_cleanup_scan_indexes'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='generationstatus',
            index=models.Index(condition=models.Q(('status__in', ('queuing', 'processing', 'completed', 'partial', 'failed')), _negated=True), fields=['id'], name='agstatus_unknown_status_idx'),
        ),
    ]
