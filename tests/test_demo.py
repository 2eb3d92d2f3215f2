"""The demo data, seed_demo_generation, and `make demo` (which must never touch a database it did not make)."""

import hashlib
import shutil
import sqlite3
import subprocess
import uuid
from collections import Counter
from contextlib import closing
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from psycopg import sql

from generation.db import database_now
from generation.demo import MIX, allocate
from generation.models import DemoRow, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import Counters, diagnose

from .factories import WINDOW, make_batch, make_lock
from .helpers import checkout_copy, create_backend_tables, manage, scratch_database, user_environment

pytestmark = pytest.mark.django_db


def seed(*args):
    out = StringIO()
    call_command("seed_demo_generation", "--force", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("count", [0, 1, 7, 10, 200, 12345])
def test_allocation_is_exact_and_covers_every_category(count):
    counts = allocate(count)
    assert sum(counts.values()) == count
    if count >= len(MIX):
        assert min(counts.values()) >= 1


def test_seeded_rows_diagnose_as_their_category():
    out = seed("--count", "300", "--seed", "7")
    counts = allocate(300)
    for category, n in counts.items():
        assert f"  {category:<18} {n}" in out
    cutoff = database_now() - WINDOW
    diagnosed = Counter(
        diagnose(Counters.of(row), row.status, stuck=row.updated_at < cutoff) for row in GenerationStatus.objects.all()
    )
    assert diagnosed == {
        "healthy": counts["healthy"], "finished": counts["finished"], "all_accounted": counts["all_accounted"],
        "no_active_tasks": counts["no_active_tasks"], "counter_overflow": counts["counter_overflow"],
        "stalled": counts["stalled"], "corrupt": counts["corrupt"],
    }
    assert GenerationLock.objects.filter(locked_at__lt=cutoff).exists()
    assert GenerationLock.objects.filter(locked_at__gte=cutoff).exists()


def test_same_seed_same_mix_and_clear_replaces():
    seed("--count", "50", "--seed", "3")
    first = list(GenerationStatus.objects.order_by("id").values_list("account_id", "total_requested", "status"))
    out = seed("--count", "50", "--seed", "3", "--clear")
    assert "Cleared 50 generation statuses" in out
    second = list(GenerationStatus.objects.order_by("id").values_list("account_id", "total_requested", "status"))
    assert first == second


def test_refuses_without_debug_unless_forced(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="refusing to write demo data with DEBUG off"):
        call_command("seed_demo_generation", stdout=StringIO())
    assert not GenerationStatus.objects.exists()


# --- --clear deletes only what the demo seeded -----------------------------------------------------


def table_rows():
    """Every row of the mirrored tables and of the demo's record, every column."""
    return [list(model.objects.order_by("pk").values_list()) for model in (GenerationStatus, GenerationLock, DemoRow)]


def clear_refusal():
    before = table_rows()
    with pytest.raises(CommandError) as refused:
        seed("--clear", "--count", "5")
    assert table_rows() == before, "a refused --clear deleted or wrote something"
    return str(refused.value)


def test_every_seeded_row_is_recorded_by_id_and_lock_id():
    seed("--count", "60", "--seed", "5")
    recorded = set(DemoRow.objects.values_list("kind", "row_id", "lock_id"))
    assert recorded == {("status", pk, lock_id) for pk, lock_id in GenerationStatus.objects.values_list("pk", "lock_id")} | {
        ("lock", pk, lock_id) for pk, lock_id in GenerationLock.objects.values_list("pk", "lock_id")}


@pytest.mark.parametrize("intruder", ["backend batch", "backend lock", "batch under a reused id"])
def test_clear_refuses_a_database_holding_rows_it_did_not_seed_and_deletes_nothing(intruder):
    seed("--count", "30", "--seed", "1")
    if intruder == "backend batch":
        make_batch((3, 0, 1, 2, 0), account_id=10**7)
    elif intruder == "backend lock":
        make_lock(account_id=10**7)
    else:  # the demo's row went, and the backend's row took its id (SQLite hands out the highest id again)
        last = GenerationStatus.objects.order_by("pk").last()
        last.delete()
        make_batch((3, 0, 1, 2, 0), account_id=10**7).delete()
        GenerationStatus.objects.create(id=last.pk, account_id=10**7, content_type="video", total_requested=3,
                                        status="processing", lock_id=str(uuid.uuid4()))
    statuses, locks = (1, 0) if intruder != "backend lock" else (0, 1)
    message = clear_refusal()
    assert message.startswith("refusing to clear the ")
    assert message.endswith(
        f": it holds {statuses} generation {'status' if statuses == 1 else 'statuses'} and {locks} generation "
        f"lock{'s' * (locks != 1)} that seed_demo_generation did not insert; --clear deletes only demo data "
        "(nothing was deleted)")


def test_clear_refuses_a_real_database_the_demo_never_seeded():
    """No record at all, as in any backend's database (even one where the demo ran elsewhere first)."""
    for account in range(1, 4):
        make_batch((3, 0, 1, 2, 0), account_id=account, lock_held_for=timedelta(hours=5))
    assert "it holds 3 generation statuses and 3 generation locks that seed_demo_generation did not insert" in (
        clear_refusal())


@pytest.mark.django_db(transaction=True)
def test_clear_deletes_the_demo_rows_after_the_job_repaired_them_and_an_undo_put_a_lock_back():
    seed("--count", "60", "--seed", "5")
    with pytest.raises(CommandError, match="cleanup completed with errors"):  # the demo has corrupt batches
        call_command("cleanup_stuck_generation", stdout=StringIO(), stderr=StringIO())
    released = RepairRecord.objects.filter(kind="lock").first()
    assert released is not None and not GenerationLock.objects.filter(lock_id=released.before["lock_id"]).exists()
    call_command("undo_repair", str(released.pk), stdout=StringIO())
    assert GenerationLock.objects.filter(pk=released.target_id, lock_id=released.before["lock_id"]).exists()
    locks = GenerationLock.objects.count()

    out = seed("--clear", "--count", "60", "--seed", "5")
    assert f"Cleared 60 generation statuses and {locks} locks seeded earlier." in out
    assert GenerationStatus.objects.count() == 60
    assert DemoRow.objects.count() == GenerationStatus.objects.count() + GenerationLock.objects.count()


# --- The command as a process, on files: one line, non-zero, the database byte-identical ------------

BACKEND_STATUSES = [  # stuck for days, so any cleanup would change them; and a corrupt one
    (1, "video", 10, 0, 2, 7, 3, "processing", "backend-lock-1", "2020-01-01 00:00:00"),
    (2, "story", 10, 0, 0, 6, 1, "processing", "backend-lock-2", "2020-01-01 00:00:00"),
    (3, "video", 3, 0, -1, 2, 0, "processing", "backend-lock-3", "2020-01-01 00:00:00"),
]
BACKEND_LOCKS = [(1, "video", "backend-lock-1", "2020-01-01 00:00:00"), (9, "slideshow", "backend-orphan", "2020-01-01 00:00:00")]


def fill_backend_tables(execute):
    """The backend's rows, through `execute(statement, params)` with %s placeholders (psycopg's style)."""
    for row in BACKEND_STATUSES:
        execute("INSERT INTO account_generation_status (account_id, content_type, total_requested, total_queued, "
                "total_processing, total_completed, total_failed, status, lock_id, updated_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    for row in BACKEND_LOCKS:
        execute("INSERT INTO account_generation_locks (account_id, content_type, lock_id, locked_at) "
                "VALUES (%s, %s, %s, %s)", row)


def sqlite_url(path):
    return f"sqlite:///{path}"


def file_digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(p.name for p in path.parent.iterdir())


@pytest.fixture(scope="module")
def backend_template(tmp_path_factory):
    """A migrated SQLite database holding a backend's rows, never seeded by the demo."""
    path = tmp_path_factory.mktemp("backend") / "backend.sqlite3"
    migrated = manage("migrate", env={"DATABASE_URL": sqlite_url(path)})
    assert migrated.returncode == 0, migrated.stderr
    with closing(sqlite3.connect(path)) as db, db:
        fill_backend_tables(lambda statement, row: db.execute(statement.replace("%s", "?"), row))
    return path


@pytest.fixture
def backend_sqlite(backend_template, tmp_path):
    (tmp_path / "backend").mkdir()
    return shutil.copy2(backend_template, tmp_path / "backend" / "backend.sqlite3")


@pytest.mark.parametrize("schema", ["migrated", "before the demo record existed (0004)"])
def test_clear_on_a_backend_database_exits_1_with_one_line_after_a_demo_was_seeded_elsewhere(
        schema, backend_template, backend_sqlite, tmp_path):
    demo = shutil.copy2(backend_template, tmp_path / "demo.sqlite3")
    with closing(sqlite3.connect(demo)) as db, db:
        db.execute("DELETE FROM account_generation_status")
        db.execute("DELETE FROM account_generation_locks")
    seeded = manage("seed_demo_generation", "--clear", "--count", "20", env={"DATABASE_URL": sqlite_url(demo), "DEBUG": "true"})
    assert seeded.returncode == 0, seeded.stderr
    if schema != "migrated":
        rolled_back = manage("migrate", "generation", "0004", env={"DATABASE_URL": sqlite_url(backend_sqlite)})
        assert rolled_back.returncode == 0, rolled_back.stderr
    before = file_digest(backend_sqlite)

    # what the old Makefile did to whatever DATABASE_URL named: DEBUG=true gets past the seed's first guard
    result = manage("seed_demo_generation", "--clear", "--seed", "42",
                    env={"DATABASE_URL": sqlite_url(backend_sqlite), "DEBUG": "true"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"refusing to clear the sqlite database {backend_sqlite}: it holds 3 generation statuses and "
        "2 generation locks that seed_demo_generation did not insert; --clear deletes only demo data (nothing was deleted)"]
    assert file_digest(backend_sqlite) == before


# --- make demo: its own database, whatever DATABASE_URL or .env say ---------------------------------

DEMO_COUNT = 40


def make_demo(project, **env):
    # -o: the shared .venv counts as installed, whatever the copied files' times say
    return subprocess.run(["make", "-o", ".venv/.installed", "demo", f"DEMO_COUNT={DEMO_COUNT}"], cwd=project,
                          env=user_environment(**env), capture_output=True, text=True, timeout=300)


def demo_database_holds_the_demo(project, *, runs=1):
    with closing(sqlite3.connect(project / "demo.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM account_generation_status").fetchone() == (DEMO_COUNT,)
        assert db.execute("SELECT count(*) FROM generation_demorow WHERE kind = 'status'").fetchone() == (DEMO_COUNT,)
        assert db.execute("SELECT count(*) FROM generation_cleanuprun WHERE dry_run = 0").fetchone() == (runs,)
        assert db.execute("SELECT username, is_superuser FROM auth_user").fetchall() == [("admin", 1)]


def bare(project, *args):
    """`.venv/bin/python manage.py ARGS` from the checkout, with nothing in the environment but the user's."""
    return subprocess.run([str(project / ".venv" / "bin" / "python"), "manage.py", *args], cwd=project,
                          env=user_environment(), capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(300)  # make demo / pytest in a process of their own: tens of seconds on a loaded machine
def test_make_demo_leaves_the_databases_named_by_database_url_and_by_env_alone(backend_sqlite, tmp_path):
    project = checkout_copy(tmp_path / "checkout")
    named_by_env = shutil.copy2(backend_sqlite, tmp_path / "named-by-env.sqlite3")
    dotenv = f"DATABASE_URL={sqlite_url(named_by_env)}\nDEBUG=true\n"
    (project / ".env").write_text(dotenv)
    before = file_digest(backend_sqlite), file_digest(named_by_env)

    result = make_demo(project, DATABASE_URL=sqlite_url(backend_sqlite))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (file_digest(backend_sqlite), file_digest(named_by_env)) == before
    assert result.stdout.splitlines()[0].startswith(f"The demo database: {project}/demo.sqlite3 ")
    assert "Left your .env as it is" in result.stdout
    assert "Note: DATABASE_URL is set in your environment" in result.stdout
    assert (project / ".env").read_text() == dotenv
    demo_database_holds_the_demo(project)


@pytest.mark.timeout(300)  # make demo / pytest in a process of their own: tens of seconds on a loaded machine
def test_after_make_demo_bare_commands_use_the_demo_database_and_a_second_run_starts_over(tmp_path):
    project = checkout_copy(tmp_path / "checkout")
    first = make_demo(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Wrote .env: bare manage.py commands now use the demo database." in first.stdout
    dotenv = (project / ".env").read_text()
    assert f"DATABASE_URL={sqlite_url(project / 'demo.sqlite3')}\n" in dotenv
    [key] = [line.removeprefix("SECRET_KEY=") for line in dotenv.splitlines() if line.startswith("SECRET_KEY=")]
    assert len(key) >= 50
    assert "DEBUG" not in dotenv  # DEBUG stays off outside make demo / make serve

    where = bare(project, "shell", "--no-imports", "-c", "from django.conf import settings; print(settings.DATABASES['default']['NAME'])")
    assert where.stdout.strip() == str(project / "demo.sqlite3"), where.stderr
    dry_run = bare(project, "cleanup_stuck_generation", "--dry-run")
    assert "Configuration error" not in dry_run.stderr
    assert dry_run.returncode == 1, dry_run.stderr  # the demo's corrupt batches: completed with errors
    [totals] = [line for line in dry_run.stdout.splitlines() if line.startswith("DRY RUN: ")]
    assert " corrupt 1," in totals

    again = make_demo(project)  # clears what the first run seeded (and the job then repaired), seeds again
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"Cleared {DEMO_COUNT} generation statuses and " in again.stdout
    assert ".env (from an earlier make demo) points bare manage.py commands at the demo database." in again.stdout
    assert "Demo superuser 'admin' already exists" in again.stdout
    assert (project / ".env").read_text() == dotenv
    demo_database_holds_the_demo(project, runs=2)


def postgres_digest(url):
    """Every table's rows (md5 of the rows in order), the sequences, the columns and the indexes."""
    with psycopg.connect(url.replace("postgres://", "postgresql://")) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        digest = {table: conn.execute(sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t"
        ).format(sql.Identifier(table))).fetchone() for table in tables}
        digest["sequences"] = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1").fetchall()
        digest["columns"] = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
        digest["indexes"] = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
    return digest


@pytest.mark.postgres
@pytest.mark.timeout(300)  # make demo / pytest in a process of their own: tens of seconds on a loaded machine
def test_make_demo_leaves_a_postgres_database_holding_backend_rows_byte_identical(tmp_path):
    project = checkout_copy(tmp_path / "checkout")
    with scratch_database() as url:
        create_backend_tables(url)
        with psycopg.connect(url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            fill_backend_tables(conn.execute)
        adopted = manage("migrate", "--fake-initial", env={"DATABASE_URL": url})  # as the README's "Attaching" does
        assert adopted.returncode == 0, adopted.stderr
        before = postgres_digest(url)
        assert before["account_generation_status"][0] == 3 and before["auth_user"][0] == 0

        result = make_demo(project, DATABASE_URL=url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert postgres_digest(url) == before
    demo_database_holds_the_demo(project)
