from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from generation.models import GenerationLock, GenerationStatus


def test_str_reads_like_an_operator_would_say_it():
    status = GenerationStatus(
        id=42, account_id=7, content_type="video", status="processing", total_requested=10,
        total_completed=5, total_failed=1,
    )
    assert str(status) == "#42 account 7 video processing 6/10"
    lock = GenerationLock(account_id=7, content_type="story", lock_id="abc")
    assert str(lock) == "lock abc account 7 story"


@pytest.mark.django_db
def test_migrations_match_models():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_database_defaults_fill_counters_and_status():
    row = GenerationStatus.objects.create(account_id=1, content_type="video", total_requested=3)
    row.refresh_from_db()
    assert (row.total_queued, row.total_processing, row.total_completed, row.total_failed) == (0, 0, 0, 0)
    assert row.status == "queuing"


# The spec's tables, column by column: (name, data_type, nullable, default or None)
SPEC_COLUMNS = {
    "account_generation_status": [
        ("id", "bigint", "NO", None),
        ("created_at", "timestamp with time zone", "YES", None),
        ("updated_at", "timestamp with time zone", "YES", None),
        ("account_id", "bigint", "NO", None),
        ("content_type", "character varying(50)", "NO", None),
        ("total_requested", "bigint", "NO", None),
        ("total_queued", "bigint", "YES", "0"),
        ("total_processing", "bigint", "YES", "0"),
        ("total_completed", "bigint", "YES", "0"),
        ("total_failed", "bigint", "YES", "0"),
        ("status", "character varying(50)", "NO", "'queuing'::character varying"),
        ("started_at", "timestamp with time zone", "YES", None),
        ("completed_at", "timestamp with time zone", "YES", None),
        ("error_message", "text", "YES", None),
        ("error_code", "character varying(100)", "YES", None),
        ("lock_id", "text", "YES", None),
    ],
    "account_generation_locks": [
        ("id", "bigint", "NO", None),
        ("created_at", "timestamp with time zone", "YES", None),
        ("account_id", "bigint", "NO", None),
        ("content_type", "character varying(50)", "NO", None),
        ("locked_at", "timestamp with time zone", "NO", None),
        ("lock_id", "text", "NO", None),
    ],
}


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("table", sorted(SPEC_COLUMNS))
def test_migrated_postgres_schema_matches_the_spec(table):
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT column_name,
                   CASE WHEN character_maximum_length IS NOT NULL
                        THEN data_type || '(' || character_maximum_length || ')' ELSE data_type END,
                   is_nullable, column_default, is_identity
            FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position
            """,
            [table],
        )
        rows = cursor.fetchall()
    columns = [(name, kind, nullable, default) for name, kind, nullable, default, _ in rows]
    assert columns == SPEC_COLUMNS[table]
    assert [name for name, *_, identity in rows if identity == "YES"] == ["id"]  # a bigserial equivalent


def _index_definitions(table):
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return {row[0].split(" USING ", 1)[1] + (" UNIQUE" if " UNIQUE " in row[0] else "") for row in cursor}


@pytest.mark.postgres
@pytest.mark.django_db
def test_migrated_postgres_indexes_match_the_spec():
    # 0001 creates exactly these; later migrations may add partial indexes for the job's scans.
    status_indexes = _index_definitions("account_generation_status")
    assert {"btree (id) UNIQUE", "btree (account_id)", "btree (lock_id)"} <= status_indexes
    assert _index_definitions("account_generation_locks") >= {
        "btree (id) UNIQUE", "btree (account_id)", "btree (account_id, content_type) UNIQUE", "btree (lock_id) UNIQUE",
    }
