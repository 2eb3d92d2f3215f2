"""generation.health: the schedule interval, the health overview, repairs per day."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from generation import health, services
from generation.models import (
    CleanupRun,
    GenerationLock,
    GenerationStatus,
    Outcome,
    RecordKind,
    RecordRule,
    RepairRecord,
    RunKind,
)
from generation.rules import Rule

from .factories import job

STUCK = timedelta(hours=3, minutes=1)
FRESH = timedelta(hours=2, minutes=59)


@pytest.fixture(autouse=True)
def job_settings(settings):
    settings.GENERATION_STUCK_AFTER = "3h"
    settings.GENERATION_LOCK_TTL = "3h"
    settings.GENERATION_FAIL_STALLED_AFTER = ""
    settings.CLEANUP_SCHEDULE = "*/30 * * * *"


def make(t, q, p, c, f, *, status="processing", idle=STUCK, account=1, lock_id=None):
    return GenerationStatus(
        account_id=account, content_type="video", status=status, total_requested=t, total_queued=q,
        total_processing=p, total_completed=c, total_failed=f, updated_at=timezone.now() - idle, lock_id=lock_id)


# --- The schedule's interval ----------------------------------------------------------------------

MONDAY = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("schedule", "interval"), [
    ("*/30 * * * *", timedelta(minutes=30)),
    ("* * * * *", timedelta(minutes=1)),
    ("0 3 * * *", timedelta(days=1)),
    ("0,10 * * * *", timedelta(minutes=50)),  # uneven: the longest gap counts
    ("*/30 9-17 * * 1-5", timedelta(days=2, hours=15, minutes=30)),  # Friday 17:30 to Monday 09:00
    ("0 0 1 * *", timedelta(days=31)),  # Dec 1 to Jan 1
])
def test_schedule_interval_is_the_longest_gap(schedule, interval):
    assert health.schedule_interval(schedule, start=MONDAY) == interval


@pytest.mark.parametrize("schedule", ["61 * * * *", "0 0 30 2 *", "* * *"])
def test_a_schedule_cron_cannot_run_is_a_value_error(schedule):
    with pytest.raises(ValueError, match="CLEANUP_SCHEDULE"):
        health.schedule_interval(schedule, start=MONDAY)


# --- The overview ---------------------------------------------------------------------------------


def _run(*, trigger="cron", outcome=Outcome.OK, finished_ago=timedelta(minutes=10), error=""):
    now = timezone.now()
    run = CleanupRun.objects.create(trigger=trigger, outcome=outcome, error=error,
                                    finished_at=None if finished_ago is None else now - finished_ago)
    CleanupRun.objects.filter(pk=run.pk).update(started_at=now - (finished_ago or timedelta(0)) - timedelta(seconds=5))
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_overview_counts_stuck_batches_by_rule_and_expired_locks():
    GenerationStatus.objects.bulk_create([
        make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, idle=FRESH), make(10, 0, 0, 6, 1), make(10, 1, 1, 3, 2),
        make(10, 1, 1, 3, 2), make(3, 0, -1, 2, 0), make(3, 0, 0, 3, 0, status="completed"),
        make(10, 5, 0, 0, 0, idle=timedelta(minutes=5), lock_id="busy"),
    ])
    now = timezone.now()
    GenerationLock.objects.bulk_create([
        GenerationLock(account_id=1, content_type="video", lock_id="busy", locked_at=now - timedelta(hours=3, minutes=1)),
        GenerationLock(account_id=2, content_type="video", lock_id="orphan", locked_at=now - timedelta(hours=9)),
        GenerationLock(account_id=3, content_type="video", lock_id="fresh", locked_at=now - timedelta(hours=2, minutes=59)),
    ])
    report = health.overview(job=job())
    assert report.stuck_by_rule == {Rule.CORRUPT: 1, Rule.ALL_ACCOUNTED: 1, Rule.NO_ACTIVE_TASKS: 1,
                                    Rule.COUNTER_OVERFLOW: 0, Rule.STALLED: 2}
    assert (report.stuck, report.repairable) == (5, 2)
    assert (report.expired_locks, report.expired_locks_of_active_batches) == (2, 1)
    assert (report.stuck_after_label, report.lock_ttl_label, report.interval_label, report.overdue_label) == (
        "3h", "3h", "30m", "1h")


@pytest.mark.django_db
def test_overview_takes_a_handful_of_queries_whatever_the_data():
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3, account=i) for i in range(300)])
    with CaptureQueriesContext(connection) as queries:
        health.overview(job=job())
    assert len(queries) <= 8


@pytest.mark.django_db
def test_no_completed_run_is_a_warning():
    _run(trigger="admin")  # an admin action repairs hand-picked rows: it says nothing about the schedule
    _run(trigger="cron", outcome="", finished_ago=None)  # died
    _run(trigger="cron", outcome=Outcome.SKIPPED)
    report = health.overview(job=job())
    assert "The cleanup job has never completed a run (from cron or the command)." in report.warnings
    assert report.last_completed is None


@pytest.mark.django_db
def test_a_recent_completed_run_raises_no_warning():
    run = _run(finished_ago=timedelta(minutes=59))
    report = health.overview(job=job())
    assert report.last_completed == run and report.last_run == run
    assert report.warnings == []


@pytest.mark.django_db
def test_a_completed_run_older_than_twice_the_interval_is_a_warning(settings):
    _run(finished_ago=timedelta(hours=1, minutes=1, seconds=30))
    [warning] = health.overview(job=job()).warnings
    assert warning == ('The last completed run of the cleanup job finished 1h1m ago, more than twice the schedule\'s '
                       'interval (30m, from CLEANUP_SCHEDULE "*/30 * * * *"): is cron still running it?')
    settings.CLEANUP_SCHEDULE = "0 * * * *"  # hourly: 1h01m is within twice that
    assert health.overview(job=job()).warnings == []


@pytest.mark.django_db
def test_a_run_with_errors_counts_as_completed_but_is_shown():
    run = _run(outcome=Outcome.ERRORS, error="batch #7 has corrupt counters\nbatch #9 has corrupt counters")
    report = health.overview(job=job())
    assert report.last_completed == run
    assert report.warnings == [f"The last completed job run, run #{run.pk}, found errors: batch #7 has corrupt counters "
                               "(and more on its page)"]
    _run(trigger="admin", outcome=Outcome.ERRORS, error="batch #8 has corrupt counters")
    assert health.overview(job=job()).warnings == report.warnings  # an admin action's findings are not the job's


@pytest.mark.django_db
def test_a_run_that_never_finished_is_a_warning(settings):
    settings.CLEANUP_SCHEDULE = "0 3 * * *"
    _run(finished_ago=timedelta(hours=3))
    dead = _run(outcome="", finished_ago=None)
    # 30 s spare: on PostgreSQL the database clock is the test transaction's start, a little earlier
    CleanupRun.objects.filter(pk=dead.pk).update(started_at=timezone.now() - timedelta(hours=2, seconds=30))
    assert health.overview(job=job()).warnings == [
        f"Run #{dead.pk} started 2h ago and never finished (the process died, or is still running)."]


# --- Repairs per day and the chart ---------------------------------------------------------------


def _record(run, rule, when, kind=RecordKind.STATUS):
    record = RepairRecord.objects.create(run=run, kind=kind, target_id=1, account_id=1, content_type="video",
                                         rule=rule, before={}, after={})
    RepairRecord.objects.filter(pk=record.pk).update(created_at=when)


@pytest.mark.django_db
def test_repairs_per_day_groups_the_last_30_days_by_rule():
    run = _run()
    today = timezone.localdate()
    noon = timezone.make_aware(datetime.combine(today, datetime.min.time())) + timedelta(hours=12)
    _record(run, RecordRule.ALL_ACCOUNTED, noon)
    _record(run, RecordRule.ALL_ACCOUNTED, noon)
    _record(run, RecordRule.EXPIRED_LOCK, noon - timedelta(days=3), kind=RecordKind.LOCK)
    _record(run, RecordRule.NO_ACTIVE_TASKS, noon - timedelta(days=29))
    _record(run, RecordRule.NO_ACTIVE_TASKS, noon - timedelta(days=30))  # too old
    _record(run, RecordRule.RELEASED_WITH_BATCH, noon, kind=RecordKind.LOCK)  # counted under its batch's rule
    days, counts = health.repairs_per_day(today=today)
    assert len(days) == 30 and days[-1] == today and days[0] == today - timedelta(days=29)
    assert counts == {
        (today, RecordRule.ALL_ACCOUNTED): 2,
        (today - timedelta(days=3), RecordRule.EXPIRED_LOCK): 1,
        (today - timedelta(days=29), RecordRule.NO_ACTIVE_TASKS): 1,
    }


@pytest.mark.django_db
def test_overview_chart_counts_todays_repairs(admin_user):
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3), make(10, 0, 0, 6, 1)])
    services.cleanup(job=job(), trigger="cron")
    chart = health.overview(job=job()).chart
    assert {item.label: item.total for item in chart.legend} == {
        "all_accounted": 1, "no_active_tasks": 1, "counter_overflow": 0, "stalled_failed": 0, "expired_lock": 0,
        "released_by_hand": 0}
    assert health.overview(job=job()).warnings == []


@pytest.mark.django_db
def test_an_undo_command_run_is_not_the_cleanup_job_running():
    cleanup = _run(trigger="command", finished_ago=timedelta(hours=5))
    undo_run = _run(trigger="command", finished_ago=timedelta(minutes=1))
    CleanupRun.objects.filter(pk=undo_run.pk).update(kind=RunKind.UNDO)
    report = health.overview(job=job())
    assert report.last_completed == cleanup and report.last_run == cleanup


# --- The stuck backlog per run ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_job_run_over_the_whole_table_records_how_many_batches_it_found_stuck(admin_user):
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3), make(10, 1, 1, 3, 2), make(3, 0, -1, 2, 0),
                                          make(10, 0, 0, 6, 1, idle=FRESH)])
    whole = services.cleanup(job=job(), trigger="cron")
    assert CleanupRun.objects.get(pk=whole.run_id).stuck_found == 3  # repaired, stalled, corrupt
    GenerationStatus.objects.bulk_create([make(10, 0, 0, 6, 1, account=2)])
    for kwargs in ({"accounts": [2]}, {"content_types": ["video"]}, {"only": "locks"}):
        run = services.cleanup(job=job(), trigger="command", **kwargs)
        assert CleanupRun.objects.get(pk=run.run_id).stuck_found is None, kwargs  # not the whole backlog
    admin_run = services.repair_selected(job=job(), ids=[1], actor=admin_user)
    assert CleanupRun.objects.get(pk=admin_run.run_id).stuck_found is None


@pytest.mark.django_db
def test_a_batch_that_moved_on_before_its_page_still_counts_as_found(monkeypatch):
    """The backlog a run found is what it examined plus what moved on (or was busy) before its page came."""
    GenerationStatus.objects.bulk_create([make(10, 0, 2, 7, 3), make(10, 0, 2, 7, 3, account=2)])
    first = GenerationStatus.objects.order_by("id").first()
    real = services.status_page

    def a_worker_moves_it_first(ids, *args, **kwargs):
        GenerationStatus.objects.filter(pk=first.pk).update(updated_at=timezone.now())
        return real(ids, *args, **kwargs)

    monkeypatch.setattr(services, "status_page", a_worker_moves_it_first)
    report = services.cleanup(job=job(), trigger="cron")
    assert (report.statuses.examined, report.statuses.moved_on) == (1, 1)
    assert CleanupRun.objects.get(pk=report.run_id).stuck_found == 2


@pytest.mark.django_db
def test_backlog_per_run_charts_the_last_job_runs_oldest_first():
    runs = []
    for n in range(4):
        run = _run(finished_ago=timedelta(hours=4 - n))
        CleanupRun.objects.filter(pk=run.pk).update(stuck_found=10 + n, repaired_all_accounted=5, stalled=2, corrupt=1)
        runs.append(run)
    CleanupRun.objects.filter(pk=_run(trigger="admin").pk).update(stuck_found=99)  # not the job
    CleanupRun.objects.filter(pk=_run().pk).update(kind=RunKind.UNDO, stuck_found=99)
    columns = health.backlog_per_run(runs=3)
    assert [c.key for c in columns] == [r.pk for r in runs[1:]]
    assert columns[-1].values == {"repaired": 5, "stalled": 2, "corrupt": 1, "busy or moved on": 5}
    chart = health.overview(job=job()).backlog
    assert chart.days == 4 and {item.label: item.total for item in chart.legend}["busy or moved on"] == 5


@pytest.mark.django_db
def test_the_migration_gives_runs_recorded_before_it_what_they_examined():
    from importlib import import_module

    from django.apps import apps

    migration = import_module("generation.migrations.0008_cleanuprun_stuck_found")
    whole = _run()
    CleanupRun.objects.filter(pk=whole.pk).update(examined=7, filters={"accounts": [], "only": None})
    part = _run(trigger="command")
    CleanupRun.objects.filter(pk=part.pk).update(examined=7, filters={"accounts": [3]})
    locks_only = _run()
    CleanupRun.objects.filter(pk=locks_only.pk).update(examined=0, filters={"only": "locks"})
    by_hand = _run(trigger="admin")
    migration.backfill(apps, None)
    found = dict(CleanupRun.objects.values_list("pk", "stuck_found"))
    assert found == {whole.pk: 7, part.pk: None, locks_only.pk: None, by_hand.pk: None}
