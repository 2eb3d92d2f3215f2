"""The schema check, through `manage.py` on scratch PostgreSQL databases, and in-process on any database."""

from io import StringIO

import psycopg
import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection

from generation.checks import JOB_CHECKS, Messages, check_mirrored_tables, schema_problems

from .helpers import ROOT, create_backend_tables, manage, scratch_database


@pytest.mark.django_db
def test_migrated_test_database_has_no_schema_problems():
    assert schema_problems(connection) == []
    assert check_mirrored_tables(databases=["default"]) == []


def test_schema_check_is_silent_without_databases():
    assert check_mirrored_tables(databases=None) == []


@pytest.mark.django_db
def test_a_missing_column_is_an_error(monkeypatch):
    from generation.models import GenerationStatus

    field = GenerationStatus._meta.get_field("lock_id")
    monkeypatch.setattr(field, "column", "lock_ref")
    [error] = check_mirrored_tables(databases=["default"])
    assert error.id == Messages.SCHEMA_ID
    assert "column account_generation_status.lock_ref is missing" in error.msg


@pytest.mark.postgres
@pytest.mark.django_db
def test_a_column_of_another_kind_is_an_error_but_another_integer_width_is_not():
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE account_generation_status ALTER COLUMN total_failed TYPE integer")
        assert schema_problems(connection) == []
        cursor.execute("ALTER TABLE account_generation_status ALTER COLUMN total_failed TYPE text")
        assert schema_problems(connection) == [
            "column account_generation_status.total_failed is text, expected integer"
        ]


@pytest.mark.postgres
def test_migrate_on_an_empty_database_succeeds_and_check_is_clean():
    with scratch_database() as url:
        migrated = manage("migrate", env={"DATABASE_URL": url})
        assert migrated.returncode == 0, migrated.stderr
        checked = manage("check", "--database", "default", env={"DATABASE_URL": url})
        assert checked.returncode == 0, checked.stderr
        assert "generation.E001" not in checked.stderr + checked.stdout


@pytest.mark.postgres
def test_faked_0001_without_tables_reports_E001_naming_each_table():
    with scratch_database() as url:
        env = {"DATABASE_URL": url}
        assert manage("migrate", "contenttypes", env=env).returncode == 0
        faked = manage("migrate", "generation", "0001", "--fake", env=env)
        assert faked.returncode == 0, faked.stderr
        checked = manage("check", "--database", "default", env=env)
        assert checked.returncode == 1
        assert "generation.E001" in checked.stderr
        assert "table account_generation_status is missing" in checked.stderr
        assert "table account_generation_locks is missing" in checked.stderr


@pytest.mark.postgres
def test_an_empty_database_gets_no_message_and_existing_tables_a_fake_initial_hint():
    with scratch_database() as url:
        env = {"DATABASE_URL": url}
        checked = manage("check", "--database", "default", env=env)
        assert checked.returncode == 0
        assert "generation.W" not in checked.stderr + checked.stdout
        create_backend_tables(url)
        checked = manage("check", "--database", "default", env=env)
        assert checked.returncode == 0
        assert "generation.W001" in checked.stderr and "migrate --fake-initial" in checked.stderr


@pytest.mark.postgres
def test_backend_created_tables_are_adopted_with_fake_initial():
    ddl = (ROOT / "tests" / "backend_schema.sql").read_text()
    with scratch_database() as url:
        with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            conn.execute(ddl)
            conn.execute(
                "INSERT INTO account_generation_status (account_id, content_type, total_requested, updated_at) "
                "VALUES (7, 'video', 10, now())"
            )
        env = {"DATABASE_URL": url}
        adopted = manage("migrate", "--fake-initial", env=env)
        assert adopted.returncode == 0, adopted.stderr
        assert "generation.0001_initial... FAKED" in adopted.stdout
        checked = manage("check", "--database", "default", env=env)
        assert checked.returncode == 0, checked.stderr
        script = (
            "from generation.models import GenerationStatus as S, GenerationLock as L; "
            "from django.utils import timezone; "
            "row = S.objects.get(account_id=7); row.total_completed = 10; row.save(update_fields=['total_completed']); "
            "L.objects.create(account_id=7, content_type='video', locked_at=timezone.now(), lock_id='x'); "
            "print(S.objects.get(account_id=7), L.objects.count())"
        )
        used = manage("shell", "-c", script, env=env)
        assert used.returncode == 0, used.stderr
        assert used.stdout.strip().splitlines()[-1].endswith("queuing 10/10 1")


def test_settings_check_reports_each_bad_setting(settings):
    settings.GENERATION_LOCK_TTL = "-5m"
    errors = [m for m in checks.run_checks() if m.id == Messages.SETTINGS_ID]
    assert [e.msg for e in errors] == ["GENERATION_LOCK_TTL='-5m' must be a positive duration"]


def test_log_folder_check_warns_when_a_file_stands_where_the_folder_should_be(settings, tmp_path):
    from generation.checks import check_log_file

    (tmp_path / "afile").write_text("")
    settings.CLEANUP_LOG_FILE = str(tmp_path / "afile" / "cleanup.log")
    [warning] = check_log_file()
    assert warning.id == Messages.LOG_DIR_ID


@pytest.fixture
def registered_check():
    """Register a failing system check under the given tags for one test."""
    added = []

    def register(*tags):
        def failing(app_configs=None, **kwargs):
            return [checks.Error(f"a failing check tagged {', '.join(tags)}", id="test.E001")]

        checks.register(failing, *tags)
        added.append(failing)

    yield register
    for check in added:
        checks.registry.registry.registered_checks.discard(check)


@pytest.mark.django_db
def test_the_cleanup_runs_the_jobs_checks_and_not_the_web_sides(registered_check):
    # a mistake in the admin or the URLs is `manage.py check`'s to report: it must not stop the job that keeps
    # generation unblocked (nor make every cron run import the whole web side to look for it)
    registered_check(checks.Tags.urls)
    registered_check(checks.Tags.admin)
    registered_check(checks.Tags.models)
    call_command("cleanup_stuck_generation", "--dry-run", skip_checks=False, stdout=StringIO())
    registered_check(JOB_CHECKS)
    with pytest.raises(SystemCheckError, match="a failing check tagged generation"):
        call_command("cleanup_stuck_generation", "--dry-run", skip_checks=False, stdout=StringIO())


def test_every_check_of_the_job_is_tagged_so():
    # `manage.py check --tag generation` runs them all; the cleanup runs those and the models' checks
    ours = {check.__name__ for check in checks.registry.registry.get_checks() if check.__module__ == "generation.checks"}
    tagged = {check.__name__ for check in checks.registry.registry.get_checks()
              if check.__module__ == "generation.checks" and JOB_CHECKS in check.tags}
    assert ours and tagged == ours
