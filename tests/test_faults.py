"""Faults: the cleanup's connection killed mid-run, the database unreachable, a lock wait that times out.

Each fault is injected at a point the test controls (a wrapper around one step of services), from another
connection, as an operator or a failover would cause it.
"""

import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import load_command_class
from django.db import connection

from generation import pages, rules, services
from generation.db import bounded_transaction
from generation.models import CleanupRun, GenerationLock, GenerationStatus, RepairRecord
from generation.rules import Counters

from .factories import OUTSIDE, job, make_batch, make_lock
from .helpers import manage
from .simulator import backend_connection

PASSWORD = "s3cret-pw"


def run_command(*args):
    """The command exactly as manage.py runs it (parsing, checks, CommandError -> one line and an exit code),
    in this process, so a test can reach into it; returns (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        command = load_command_class("generation", "cleanup_stuck_generation")
        try:
            command.run_from_argv(["manage.py", "cleanup_stuck_generation", *args])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def kill_django_connection():
    """pg_terminate_backend on this thread's Django connection, from another connection."""
    pid = connection.connection.info.backend_pid
    with backend_connection(connection) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]


@dataclass
class Planted:
    batch: GenerationStatus
    decision: rules.RepairDecision


def plant_world():
    """Nine finishing batches holding a fresh lock (released with the batch), three overflow batches,
    three expired locks nobody refers to. In pages of three."""
    planted = []
    shapes = [(4, 0, 0, 0, 0), (10, 0, 2, 7, 3), (10, 0, 0, 6, 1)] * 3 + [(10, 2, 5, 6, 0)] * 3
    for counters in shapes:
        batch = make_batch(counters, lock_held_for=timedelta(minutes=10))
        planted.append(Planted(batch, rules.decide(Counters(*counters), batch.status)))
    orphans = [make_lock(account_id=5000 + n, held_for=OUTSIDE) for n in range(3)]
    return planted, orphans


def applied_or_untouched(planted, orphans):
    """Rows, locks and RepairRecords agree for every batch: fully repaired or not at all. Returns the counts."""
    applied = untouched = 0
    for item in planted:
        original = item.batch
        row = GenerationStatus.objects.get(pk=original.pk)
        status_records = RepairRecord.objects.filter(kind="status", target_id=row.pk)
        lock_records = RepairRecord.objects.filter(kind="lock", before__lock_id=row.lock_id)
        lock_present = GenerationLock.objects.filter(lock_id=row.lock_id).exists()
        if status_records.exists():
            assert status_records.count() == 1
            assert (Counters.of(row), row.status) == (item.decision.after, item.decision.status)
            assert row.updated_at > original.updated_at
            assert lock_present is not item.decision.finishes  # released together with the batch, or kept
            assert lock_records.count() == int(item.decision.finishes)
            applied += 1
        else:
            assert (Counters.of(row), row.status, row.updated_at) == (
                Counters.of(original), original.status, original.updated_at)
            assert row.completed_at is None and lock_present and not lock_records.exists()
            untouched += 1
    for lock in orphans:
        records = RepairRecord.objects.filter(kind="lock", target_id=lock.pk).count()
        assert records == int(not GenerationLock.objects.filter(pk=lock.pk).exists())
        applied += records
        untouched += 1 - records
    return applied, untouched


def wrap(monkeypatch, module, name, make_wrapper):
    monkeypatch.setattr(module, name, make_wrapper(getattr(module, name)))


def kill_inside_second_status_page(monkeypatch):
    calls = []

    def make(real):
        def release_locks(*args, **kwargs):
            released = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == 2:
                kill_django_connection()  # recorded, written, locks released: not yet committed
            return released
        return release_locks

    wrap(monkeypatch, pages, "_release_locks", make)
    return 3  # page 1 committed before the kill


def kill_between_second_and_third_status_page(monkeypatch):
    def make(real):
        def pages(queryset, batch_size):
            for n, ids in enumerate(real(queryset, batch_size)):
                yield ids
                if n == 1:
                    kill_django_connection()  # page 2 committed; page 3 not selected yet
        return pages

    wrap(monkeypatch, services, "keyset_pages", make)
    return 6


def kill_inside_first_lock_page(monkeypatch):
    def make(real):
        def lock_page(*args, **kwargs):
            result = real(*args, **kwargs)
            kill_django_connection()  # expired locks deleted and recorded, not yet committed
            return result
        return lock_page

    wrap(monkeypatch, services, "lock_page", make)
    return 12  # every status page committed, no lock page


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("inject", [kill_inside_second_status_page, kill_between_second_and_third_status_page,
                                    kill_inside_first_lock_page])
def test_connection_killed_mid_run_exits_1_and_leaves_no_half_batch(monkeypatch, inject):
    planted, orphans = plant_world()
    applied_before_kill = inject(monkeypatch)

    code, out, err = run_command("--batch-size", "3")
    connection.close()  # this thread's connection was the one killed
    monkeypatch.undo()

    assert code == 1
    # stderr: the event lines (manage.py's is not a terminal here), then the one line saying why it stopped
    [line] = [line for line in err.splitlines() if not line.startswith("ts=")]
    assert line == err.splitlines()[-1], err
    assert line.startswith("cleanup aborted: lost the database connection during the run (")
    assert "Traceback" not in err + out
    assert applied_or_untouched(planted, orphans) == (applied_before_kill, 15 - applied_before_kill)
    # The server is still up, only the session died: the run row is closed on a new connection, as errors,
    # with the abort's line, and counts what the committed pages did (their records, nothing of the lost page).
    aborted = CleanupRun.objects.get()
    assert aborted.outcome == "errors"
    assert aborted.error.startswith("lost the database connection during the run ("), aborted.error
    assert aborted.finished_at is not None
    assert aborted.repaired == RepairRecord.objects.filter(run=aborted, kind="status").count()

    code, out, err = run_command("--batch-size", "3")
    assert code == 0 and all(line.startswith("ts=") for line in err.splitlines()), err  # events only
    assert applied_or_untouched(planted, orphans) == (15, 0)
    # nothing was repaired twice: one record per batch, one per released or expired lock
    assert RepairRecord.objects.filter(kind="status").count() == 12
    assert RepairRecord.objects.filter(kind="lock").count() == 9 + 3
    assert CleanupRun.objects.filter(outcome="ok").count() == 1


@pytest.mark.parametrize("entry", ["command", "command_json", "cron"])
def test_database_unreachable_at_start_one_line_and_no_password(tmp_path, entry):
    log_file = tmp_path / "cleanup.log"
    env = {"DATABASE_URL": f"postgres://postgres:{PASSWORD}@127.0.0.1:1/x", "CLEANUP_LOG_FILE": str(log_file),
           "LOG_LEVEL": "DEBUG"}
    args = {
        "command": ["cleanup_stuck_generation", "-v", "2"],
        "command_json": ["cleanup_stuck_generation", "--json"],
        "cron": ["shell", "-c", "from generation.cron import run_cleanup; run_cleanup()"],
    }[entry]
    result = manage(*args, env=env)
    logged = log_file.read_text() if log_file.exists() else ""
    everything = result.stdout + result.stderr + logged
    assert PASSWORD not in everything
    assert "Traceback" not in everything
    if entry == "cron":
        # the runner exits 0 by design (cron ignores it); the log file carries the one error line
        [line] = [line for line in logged.splitlines() if "ERROR" in line]
        assert "cleanup failed on database x on 127.0.0.1:1: OperationalError: connection failed" in line
    else:
        assert result.returncode == 1
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("cannot reach the database x on 127.0.0.1:1: ")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_lock_timeout_on_a_page_rolls_it_back_reports_it_and_the_run_continues():
    """The backend holds the lock row of a batch the first page finishes: that page waits lock_timeout,
    is rolled back whole and reported; the next page is repaired; the next run finishes the job."""
    first_page = [make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10)) for _ in range(3)]
    second_page = [make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10)) for _ in range(3)]
    params = {"stuck_after": timedelta(hours=3), "lock_ttl": timedelta(hours=3), "batch_size": 3,
              "lock_timeout": timedelta(milliseconds=300), "statement_timeout": timedelta(seconds=10)}
    with backend_connection(connection) as backend, backend.transaction():
        backend.execute("SELECT id FROM account_generation_locks WHERE lock_id = %s FOR UPDATE",
                        [first_page[1].lock_id])
        started = time.monotonic()
        report = services.cleanup(job=job(**params))
        elapsed = time.monotonic() - started

    assert elapsed < 3, f"the run waited {elapsed:.1f}s"
    assert report.outcome == "errors"
    [error] = report.errors
    assert error.startswith(f"status page #{first_page[0].pk}..#{first_page[-1].pk}: rolled back, left for the next "
                            "run (canceling statement due to lock timeout")
    assert report.statuses.failed_batches == 1
    assert report.statuses.repaired == 3  # the second page only: the first one's counts were rolled back with it
    for batch in first_page:
        assert GenerationStatus.objects.get(pk=batch.pk).total_failed == 0
        assert GenerationLock.objects.filter(lock_id=batch.lock_id).exists()
        assert not RepairRecord.objects.filter(target_id=batch.pk, kind="status").exists()
    for batch in second_page:
        assert GenerationStatus.objects.get(pk=batch.pk).total_failed == 4
        assert not GenerationLock.objects.filter(lock_id=batch.lock_id).exists()
    assert RepairRecord.objects.count() == 6  # three batches, three locks
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.outcome, run.repaired_no_active_tasks) == ("errors", 3)
    assert "lock timeout" in run.error

    retry = services.cleanup(job=job(**params))
    assert (retry.outcome, retry.statuses.repaired, retry.statuses.locks_released) == ("ok", 3, 3)
    assert RepairRecord.objects.count() == 12


@pytest.fixture
def slow_update_of():
    """slow_update_of(batch_id, seconds): from now on, every UPDATE of that batch's row sleeps first (a trigger),
    so the statement writing it runs long without waiting on any lock. Dropped again after the test."""
    created = []

    def plant(batch_id, seconds):
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE FUNCTION test_slow_update() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NEW; END $$")
            cursor.execute(
                "CREATE TRIGGER test_slow_update BEFORE UPDATE ON account_generation_status FOR EACH ROW "
                f"WHEN (OLD.id = {int(batch_id)}) EXECUTE FUNCTION test_slow_update()")
        created.append(batch_id)

    yield plant
    if created:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS test_slow_update ON account_generation_status")
            cursor.execute("DROP FUNCTION IF EXISTS test_slow_update()")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_statement_timeout_on_a_page_rolls_it_back_reports_it_and_the_run_continues(settings, slow_update_of):
    """A page whose write runs longer than CLEANUP_STATEMENT_TIMEOUT without waiting on a lock (lock_timeout
    cannot end it) is cancelled, rolled back whole and reported; the pages before and after it are repaired."""
    pages = [[make_batch((4, 0, 0, 0, 0), lock_held_for=timedelta(minutes=10)) for _ in range(3)] for _ in range(3)]
    settings.CLEANUP_BATCH_SIZE = "3"
    settings.CLEANUP_STATEMENT_TIMEOUT = "500ms"
    settings.CLEANUP_LOCK_TIMEOUT = "5s"
    slow = pages[1]
    slow_update_of(slow[1].pk, seconds=4)

    started = time.monotonic()
    report = services.cleanup(job=job(), trigger="command")
    elapsed = time.monotonic() - started

    assert elapsed < 3.5, f"the slow page ran {elapsed:.1f}s: the statement was not cancelled"
    assert report.outcome == "errors"
    [error] = report.errors
    assert f"#{slow[0].pk}" in error and f"#{slow[-1].pk}" in error, error  # names the page
    assert "statement timeout" in error, error
    for batch in slow:  # nothing of the page was written
        row = GenerationStatus.objects.get(pk=batch.pk)
        assert (Counters.of(row), row.status, row.updated_at, row.completed_at) == (
            Counters.of(batch), batch.status, batch.updated_at, None)
        assert GenerationLock.objects.filter(lock_id=batch.lock_id).exists()
        assert not RepairRecord.objects.filter(target_id=batch.pk, kind="status").exists()
        assert not RepairRecord.objects.filter(kind="lock", before__lock_id=batch.lock_id).exists()
    for batch in pages[0] + pages[2]:  # the run went on
        assert GenerationStatus.objects.get(pk=batch.pk).total_failed == 4
        assert not GenerationLock.objects.filter(lock_id=batch.lock_id).exists()
        assert RepairRecord.objects.filter(target_id=batch.pk, kind="status").count() == 1
    assert report.statuses.repaired == 6
    run = CleanupRun.objects.get(pk=report.run_id)
    assert (run.outcome, run.repaired_no_active_tasks) == ("errors", 6)
    assert "statement timeout" in run.error


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_only_the_engines_pages_turn_synchronous_commit_off_for_their_own_transaction():
    """A page commits without waiting for the disk (flush=False); every other bounded transaction keeps the
    server's synchronous_commit, whatever it is, and nothing outlives its transaction."""
    def setting():
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = remote_apply")
    try:
        with bounded_transaction(timedelta(seconds=5), timedelta(seconds=5)):
            assert setting() == "remote_apply"
        with bounded_transaction(timedelta(seconds=5), timedelta(seconds=5), flush=False):
            assert setting() == "off"
        assert setting() == "remote_apply"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")
