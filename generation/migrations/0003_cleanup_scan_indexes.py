# Indexes for the cleanup's two scans, added to the Go backend's tables. Written by hand (the
# operations' state is exactly what `makemigrations` generates for models.py, so `--check` stays
# clean); the README, "Migration 0003 and 0004", says what it does to the backend's tables and gives the SQL.
#
# On PostgreSQL the indexes are built with CREATE INDEX CONCURRENTLY: the tables stay writable
# while a large table is indexed (a plain CREATE INDEX would block the backend's writes for the
# whole build). That cannot run inside a transaction, hence `atomic = False`. An index a DBA
# already built by hand with the README's SQL is kept; an INVALID one left behind by an
# interrupted concurrent build is dropped and built again. SQLite has no concurrent builds (and
# Django's AddIndexConcurrently is PostgreSQL-only): a plain CREATE INDEX there.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models
from django.db.migrations.operations import AddIndex


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND pg_catalog.pg_table_is_visible(c.oid)",
                [self.index.name],
            )
            existing = cursor.fetchone()
        if existing and existing[0]:
            return None
        if existing:
            schema_editor.execute(f"DROP INDEX CONCURRENTLY {schema_editor.quote_name(self.index.name)}")
        return super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)
        return super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):

    atomic = False

    dependencies = [
        ('generation', '0002_audit_tables'),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name='generationstatus',
            index=models.Index(condition=models.Q(('status__in', ('queuing', 'processing'))), fields=['id'], name='agstatus_in_progress_idx'),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name='generationlock',
            index=models.Index(fields=['locked_at'], name='aglocks_locked_at_idx'),
        ),
    ]
